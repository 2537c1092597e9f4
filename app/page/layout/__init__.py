"""The page's layout, one module per tab: each creates its components and wires their events
to the area objects of app/page/ (what the events do lives there, not here)."""
