"""A REST API that speaks AUTOMATIC1111's ``/sdapi/v1`` dialect.

Request and response bodies use A1111's field names, defaults and types, so existing clients
(``webuiapi``, editor plug-ins, bots) work unchanged. Every request shares the one
``core.engine.Engine`` that the server built; work that touches the device (generation,
upscaling, loading or unloading a checkpoint) runs one job at a time on a single worker thread,
so the event loop stays free to answer ``progress``, ``interrupt`` and ``skip`` meanwhile.

Bad input never gives a 500: undecodable payloads are 400, unknown names (sampler, scheduler,
checkpoint, upscaler) 404, values out of range or over this server's limits 422. Every error
body carries a one-line message naming the field, in A1111's error shape
(``{"error", "detail", "body", "errors"}``).

The rooms:

- ``limits``: ``ApiLimits``, what one request may ask for.
- ``errors``: ``ApiError``, the error bodies and their OpenAPI model, validation messages,
  ``install_error_handlers`` and ``engine_error`` (an ``EngineError``'s kind -> a status).
- ``schemas``: the pydantic request and response models (the options model from the registry).
- ``images``: base64 pictures in and out, ``html_info``, the live preview of a latent.
- ``jobs``: ``JobState`` (what /progress reports), ``DeviceQueue`` (the one worker thread),
  ``ClientGone`` (a job whose client left).
- ``checkpoints``: the engine's checkpoints under A1111's titles and hashes, a client's name
  for one resolved, the current one, loading one.
- ``translate``: a request -> ``GenerationParams`` and what the job sets up around it, as pure
  functions over a ``RequestContext``; ``processed_info`` for the answer.
- One module per route group, each a ``RouteGroup`` (``group``) whose ``register(router)``
  adds its routes:
  ``generation`` (txt2img, img2img), ``extras`` (upscaling), ``models`` (checkpoints, VAEs,
  LoRAs, embeddings, samplers, schedulers, upscalers), ``options`` (options, cmd-flags),
  ``info`` (progress, interrupt, skip, png-info, memory, scripts).
- ``service``: ``SdApi``, which builds the shared parts and the route groups. ``app/server.py``
  puts ``SdApi(engine, ...).router`` and ``errors.install_error_handlers`` on the FastAPI app,
  beside the Gradio page.
"""
