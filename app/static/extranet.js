// Extra-network cards and the prompts' token counters (loaded into the page with studio.js).
//   A click on a card (or Enter on it) sends {kind, name, action} through the tab's hidden pick
//   box and button: "info" for its i button, else "use" (the server adds the LoRA tag, the
//   embedding's name, or switches the checkpoint).
//   The token counters: a prompt whose text has not changed for COUNT_AFTER_MS is counted once
//   (the tab's hidden count button), so typing sends one request per pause, not per key, and
//   text put there by a button (paste, a card, send-to) is counted too.
(() => {
  if (window.studioExtranetInstalled) return;
  window.studioExtranetInstalled = true;

  const TABS = ["txt2img", "img2img", "inpaint"];
  const COUNT_AFTER_MS = 400;

  function setHiddenText(id, value) {
    const box = document.querySelector(`#${id} textarea, #${id} input`);
    if (!box) return false;
    box.value = value;
    box.dispatchEvent(new Event("input", { bubbles: true }));  // Gradio keeps its value through "input"
    return true;
  }

  function useCard(card, action) {
    const grid = card.closest(".studio-cards");
    if (!grid) return;
    const tab = grid.dataset.tab;
    const payload = JSON.stringify({ kind: card.dataset.kind, name: card.dataset.name, action });
    if (!setHiddenText(`${tab}_extranet_pick`, payload)) return;
    // after Gradio took the value in
    setTimeout(() => document.querySelector(`#${tab}_extranet_pick_button`)?.click(), 50);
  }

  document.addEventListener("click", (event) => {
    const card = event.target.closest?.(".studio-card");
    if (!card) return;
    event.preventDefault();
    useCard(card, event.target.closest(".studio-card-info-button") ? "info" : "use");
  });
  document.addEventListener("keydown", (event) => {
    const card = event.target.closest?.(".studio-card");
    if (card && event.key === "Enter") useCard(card, "use");
  });

  const seen = {};
  setInterval(() => {
    const now = Date.now();
    for (const tab of TABS) {
      const prompt = document.querySelector(`#${tab}_prompt textarea`);
      const negative = document.querySelector(`#${tab}_neg_prompt textarea`);
      if (!prompt) continue;
      const text = `${prompt.value}\u0000${negative ? negative.value : ""}`;
      const state = seen[tab] || (seen[tab] = { text: "\u0000", since: now, counted: "\u0000" });
      if (text !== state.text) {
        state.text = text;
        state.since = now;
      } else if (text !== state.counted && now - state.since >= COUNT_AFTER_MS) {
        const button = document.querySelector(`#${tab}_token_button`);
        if (button) {
          state.counted = text;
          button.click();
        }
      }
    }
  }, 150);
})();
