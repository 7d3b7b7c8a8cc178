"""One endpoint instance: the SageMaker serving-container contract in its own process.

    python -m backends.local.gateway.model_worker --model-dir DIR --ready-file FILE [--port 0] [--threads N]

Like the SageMaker PyTorch container, DIR/code goes first on sys.path and the artifact's
own inference.py is imported from there (never training.inference); model_fn(DIR) runs once,
then uvicorn serves GET /ping and POST /invocations on 127.0.0.1. Only once the model is
loaded and the socket listens is {"port", "pid", "model_version"} written to the ready file.
Each request goes through the artifact's transform_fn(model, body, content_type, accept, context)
as the serving toolkit calls it, with a RequestContext on which a refused request sets its status,
so a bad request answers here exactly as on SageMaker. A body over MAX_REQUEST_BYTES is refused 413
(by its Content-Length before it is read). Any exception answers 500 and is logged, and the
process keeps serving. Like the gateway, the worker answers only to Host 127.0.0.1:PORT or
localhost:PORT and to no foreign Origin (guard.py's RequestGuard; PORT: the one it listens on), so
a web page that finds its port cannot reach the model through DNS rebinding. The worker exits by
itself when the process that started it (--parent-pid) goes away, so a killed gateway never leaves
instances behind.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import threading
import time
import traceback

from backends.files import write_json

log = logging.getLogger("model_worker")
_JSON = "application/json"


def _load(model_dir: str):
    code_dir = os.path.join(model_dir, "code")
    sys.path.insert(0, code_dir)
    inference = importlib.import_module("inference")
    if not os.path.abspath(inference.__file__).startswith(os.path.abspath(code_dir) + os.sep):
        raise ImportError(f"inference was imported from {inference.__file__}, not from {code_dir}")
    return inference, inference.model_fn(model_dir)


class RequestContext:
    """What transform_fn gets as TorchServe's context: it records the status a refused request sets."""

    def __init__(self) -> None:
        self.status = 200
        self.phrase = ""

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status, self.phrase = code, phrase


def _transform_fn(inference):
    """The artifact's transform_fn; for an artifact from before transform_fn, one around its handle()."""
    if hasattr(inference, "transform_fn"):
        return inference.transform_fn

    def transform_fn(model, body, content_type, accept, context):
        try:
            return inference.handle(body, content_type, accept, model), _JSON
        except inference.InferenceError as exc:
            context.set_response_status(exc.status_code)
            return exc.to_json(), _JSON

    return transform_fn


def build_app(inference, model, max_concurrency: int = 2):
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    max_bytes = getattr(inference, "MAX_REQUEST_BYTES", 6 * 1024 * 1024)
    transform_fn = _transform_fn(inference)
    limiter = anyio.CapacityLimiter(max_concurrency)

    def error(status: int, code: str, message: str) -> Response:
        return Response(json.dumps({"error": code, "message": message}), status, media_type=_JSON)

    def too_large(size: str) -> Response:  # worded as inference.py words it
        return error(413, "PayloadTooLarge", f"request body is {size} than the {max_bytes} allowed")

    async def ping(request: Request) -> Response:
        return Response(b"", 200)

    async def invocations(request: Request) -> Response:
        content_type = request.headers.get("content-type")
        accept = request.headers.get("accept")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            return too_large(f"{declared} bytes, more")
        try:
            chunks, size = [], 0
            async for chunk in request.stream():  # a chunked body has no Content-Length
                size += len(chunk)
                if size > max_bytes:
                    return too_large("more")
                chunks.append(chunk)
            body = b"".join(chunks)
            del chunks
            context = RequestContext()
            answer = await anyio.to_thread.run_sync(transform_fn, model, body, content_type, accept, context,
                                                    limiter=limiter)
        except Exception as exc:
            log.error("invocation failed:\n%s", traceback.format_exc())
            return error(500, "InternalServerError", f"{type(exc).__name__}: {exc}"[:400])
        if not isinstance(answer, tuple):  # as the toolkit takes it: the body alone, in the accepted type
            answer = (answer, accept if accept not in (None, "", "*/*") else _JSON)
        answer, media_type = answer
        return Response(answer, context.status, media_type=media_type)

    return Starlette(routes=[Route("/ping", ping, methods=["GET"]),
                             Route("/invocations", invocations, methods=["POST"])])


def _watch_parent(parent_pid: int) -> None:
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        log.warning("parent process %d is gone; exiting", parent_pid)
        logging.shutdown()
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--max-concurrency", type=int, default=2, help="predictions run at once")
    parser.add_argument("--parent-pid", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    if args.parent_pid:
        _watch_parent(args.parent_pid)
    if args.threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(args.threads))

    started = time.monotonic()
    try:
        import torch

        if args.threads > 0:
            torch.set_num_threads(args.threads)
            torch.set_num_interop_threads(1)
        inference, model = _load(args.model_dir)
        if args.threads > 0:
            torch.set_num_threads(args.threads)  # model_fn may have applied SM_NUM_CPUS
    except BaseException as exc:
        log.error("%s", traceback.format_exc().rstrip())
        logging.shutdown()
        print(f"model_fn failed: {type(exc).__name__}: {exc}", flush=True)  # the last line: the reason
        return 1
    version = getattr(model, "model_version", "")
    log.info("model loaded from %s in %.1f s (version %s)", args.model_dir, time.monotonic() - started, version)

    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if not self.should_exit:
                port = self.servers[0].sockets[0].getsockname()[1]
                write_json(args.ready_file, {"port": port, "pid": os.getpid(), "model_version": version})
                log.info("serving on %s:%d", args.host, port)

    from backends.local.gateway.guard import RequestGuard

    app = RequestGuard(build_app(inference, model, max(1, args.max_concurrency)))  # PORT: the one it listens on
    config = uvicorn.Config(app, host=args.host,
                            port=args.port, loop="uvloop", http="httptools", lifespan="off", access_log=False,
                            log_level="info", timeout_keep_alive=75, timeout_graceful_shutdown=10)
    Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
