"""REST routes of the prompt history (FastAPI), all under /history:

    GET    /history/search?q=&scope=&model=&since=&until=&favourites=&kind=&order=&limit=&offset=
    GET    /history/models
    GET    /history/entries/{id}
    DELETE /history/entries/{id}
    POST   /history/delete                 {"ids": [...]}
    POST   /history/entries/{id}/favourite {"favourite": true}
    GET    /history/entries/{id}/send?image=N      infotext + params for txt2img/img2img
    GET    /history/images/{image_id}?size=N       the image file, or a thumbnail N px wide
    GET    /history/export  (every entry)  and  POST /history/export {"ids": [...]} or filters
    POST   /history/import?mode=skip|replace       body: an export document
"""
from __future__ import annotations

import io
from typing import Annotated, Any, Callable

from fastapi import APIRouter, Body, FastAPI, HTTPException, Path, Query, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

# Ids and offsets are SQLite integers: a larger number is a 422, not an overflow inside sqlite3.
SQLITE_MAX = 2**63 - 1
MAX_IDS = 100_000  # ids one request may name
RowId = Annotated[int, Field(ge=0, le=SQLITE_MAX)]
EntryId = Annotated[int, Path(ge=0, le=SQLITE_MAX)]


class FavouriteRequest(BaseModel):
    favourite: bool = True


class DeleteRequest(BaseModel):
    ids: list[RowId] = Field(max_length=MAX_IDS)


class ExportRequest(BaseModel):
    ids: list[RowId] | None = Field(None, max_length=MAX_IDS)
    q: str | None = None
    scope: str = "prompt"
    model: str | None = None
    since: str | float | None = None
    until: str | float | None = None
    favourites: bool = False
    kind: str | None = None


def add_routes(app: FastAPI, get_store: Callable[[], Any], store_module: Any) -> None:
    """Add the routes to ``app``; ``get_store()`` gives the HistoryStore, ``store_module`` is
    store.py (loaded by the extension)."""
    HistoryError = store_module.HistoryError
    router = APIRouter(prefix="/history", tags=["history"])

    def bad_request(e: Exception):
        return HTTPException(status_code=400, detail=str(e))

    def entry_or_404(entry_id: int) -> dict:
        entry = get_store().get(entry_id)
        if entry is None:
            raise HTTPException(status_code=404, detail=f"no history entry {entry_id}")
        return entry

    @router.get("/search")
    def search(q: str = "", scope: str = "prompt", model: str | None = None, since: str | None = None,
               until: str | None = None, favourites: bool = False, kind: str | None = None,
               order: str = "newest", limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=SQLITE_MAX)):
        try:
            return get_store().search(q, scope=scope, model=model, since=since, until=until, favourites=favourites,
                                      kind=kind, order=order, limit=limit, offset=offset)
        except HistoryError as e:
            raise bad_request(e) from None

    @router.get("/models")
    def models():
        return get_store().models()

    @router.get("/entries/{entry_id}")
    def get_entry(entry_id: EntryId):
        return entry_or_404(entry_id)

    @router.delete("/entries/{entry_id}")
    def delete_entry(entry_id: EntryId):
        deleted = get_store().delete([entry_id])
        if not deleted:
            raise HTTPException(status_code=404, detail=f"no history entry {entry_id}")
        return {"deleted": deleted}

    @router.post("/delete")
    def delete_entries(request: DeleteRequest):
        return {"deleted": get_store().delete(request.ids)}

    @router.post("/entries/{entry_id}/favourite")
    def favourite(entry_id: EntryId, request: FavouriteRequest | None = None):
        wanted = request.favourite if request is not None else True
        if not get_store().set_favourite(entry_id, wanted):
            raise HTTPException(status_code=404, detail=f"no history entry {entry_id}")
        return entry_or_404(entry_id)

    @router.get("/entries/{entry_id}/send")
    def send(entry_id: EntryId, image: int | None = Query(None, ge=0, le=SQLITE_MAX)):
        try:
            payload = get_store().send_to(entry_id, image)
        except HistoryError as e:
            raise bad_request(e) from None
        if payload is None:
            raise HTTPException(status_code=404, detail=f"no history entry {entry_id}")
        return payload

    @router.get("/images/{image_id}")
    def image_file(image_id: EntryId, size: int = Query(0, ge=0, le=2048)):
        store = get_store()
        image = store.get_image(image_id)
        path = store.image_file(image["path"]) if image else None
        if path is None:
            raise HTTPException(status_code=404, detail=f"no image file for history image {image_id}")
        if not size:
            return FileResponse(path)
        thumb = store_module.thumbnail(path, size)
        if thumb is None:
            raise HTTPException(status_code=404, detail=f"history image {image_id} cannot be read")
        buffer = io.BytesIO()
        thumb.save(buffer, format="PNG")
        return Response(content=buffer.getvalue(), media_type="image/png")

    def export_response(text: str) -> Response:
        return Response(content=text, media_type="application/json",
                        headers={"Content-Disposition": 'attachment; filename="prompt-history.json"'})

    @router.get("/export")
    def export_all():
        return export_response(get_store().export_json())

    @router.post("/export")
    def export(request: ExportRequest | None = None):
        request = request or ExportRequest()
        try:
            return export_response(get_store().export_json(
                request.ids, query=request.q, scope=request.scope, model=request.model, since=request.since,
                until=request.until, favourites=request.favourites, kind=request.kind))
        except HistoryError as e:
            raise bad_request(e) from None

    @router.post("/import")
    def import_(document: dict = Body(...), mode: str = "skip"):
        try:
            return get_store().import_(document, mode=mode)
        except HistoryError as e:
            raise bad_request(e) from None

    app.include_router(router)
