"""One Lambda execution environment: a process that imports a function's handler once (the init
phase) and then runs one invocation at a time, as the AWS Python runtime does.

    python -m backends.local.gateway.lambda_runtime --code-dir DIR --handler handler.lambda_handler \
        --function-name NAME --memory-mb 512 --timeout-s 30

(the manager runs this file by path with ``python -P`` so that nothing of this project lands on the
function's sys.path). Stdlib only. The function's environment variables come from the process env.

Protocol on the original stdin/stdout, one frame per message: ``!II`` (header length, body length),
a JSON header, then the body bytes.
  runtime -> manager, once:   {"type": "ready", "init_ms": ms}  or  {"type": "init_error", ...} + error JSON
                              (then the process exits: Lambda re-runs a failed init on the next invoke)
  manager -> runtime:         {"id": request id, "deadline_ms": epoch ms, "init": first call?,
                               "arn": the ARN it was invoked by} + event bytes
  runtime -> manager:         {"type": "result" | "error", "ms": duration} + response JSON, or
                              {"type": "invalid_payload"} + the reason (the event is not JSON: the handler
                              never ran; Lambda answers InvalidRequestContentException)
Nothing an invocation sends or does, short of ending the process, ends the environment.
File descriptors 0 and 1 are then pointed at /dev/null and at stderr (the environment's log file), so
the handler's prints and logging never touch the protocol.
"""
from __future__ import annotations

import argparse
import decimal
import importlib
import json
import logging
import math
import os
import resource
import struct
import sys
import time
import traceback
import uuid
from datetime import datetime, timezone

FRAME = struct.Struct("!II")
ACCOUNT_ID = "000000000000"  # what local ARNs carry; nothing local is a real account


def read_frame(stream) -> tuple[dict, bytes] | None:
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    header_len, body_len = FRAME.unpack(head)
    header = json.loads(stream.read(header_len))
    body = stream.read(body_len) if body_len else b""
    if len(body) < body_len:
        return None
    return header, body


def encode_frame(header: dict, body: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return FRAME.pack(len(head), len(body)) + head + body


class LambdaContext:
    """What the AWS Python runtime passes as ``context`` (memory_limit_in_mb is a str there too)."""

    def __init__(self, request_id: str, deadline_ms: float, function_name: str, function_version: str,
                 memory_mb: str, region: str, log_group_name: str, log_stream_name: str, invoked_arn: str | None = None):
        self.aws_request_id = request_id
        self.function_name = function_name
        self.function_version = function_version
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = invoked_arn or f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{function_name}"
        self.log_group_name = log_group_name
        self.log_stream_name = log_stream_name
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self._deadline_ms - time.time() * 1000))

    def log(self, message: str) -> None:
        sys.stdout.write(message)

    def __repr__(self) -> str:
        return (f"LambdaContext([aws_request_id={self.aws_request_id},log_group_name={self.log_group_name},"
                f"log_stream_name={self.log_stream_name},function_name={self.function_name},"
                f"memory_limit_in_mb={self.memory_limit_in_mb},function_version={self.function_version},"
                f"invoked_function_arn={self.invoked_function_arn}])")


class _Encoder(json.JSONEncoder):
    def default(self, o):  # the AWS runtime marshals Decimal too
        if isinstance(o, decimal.Decimal):
            return int(o) if o == o.to_integral_value() else float(o)
        return super().default(o)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def decode_event(body: bytes):
    """The event an invocation's payload is ({} for an empty one); ValueError when it is not JSON as
    Lambda reads it (NaN and Infinity are not, nor a document nested past the parser's depth)."""
    if not body.strip():
        return {}
    try:
        return json.loads(body, parse_constant=_no_constant)
    except ValueError:
        raise
    except Exception as exc:  # RecursionError (nested too deep), MemoryError, ...
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


def error_body(error_type: str, message: str, request_id: str | None = None, tb=None) -> dict:
    body = {"errorMessage": message, "errorType": error_type}
    if request_id:
        body["requestId"] = request_id
    body["stackTrace"] = traceback.format_list(traceback.extract_tb(tb)) if tb is not None else []
    return body


def load_handler(spec: str):
    """Import the handler module: (callable, None) or (None, Lambda-style init error body)."""
    module_name, _, function_name = spec.replace("/", ".").rpartition(".")
    if not module_name or not function_name:
        return None, error_body("Runtime.MalformedHandlerName",
                                f"Bad handler '{spec}': not enough values to unpack (expected 2, got 1)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return None, error_body("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}",
                                tb=exc.__traceback__)
    except SyntaxError as exc:
        return None, error_body("Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {exc}",
                                tb=exc.__traceback__)
    except Exception as exc:  # an exception at import time keeps its own type, as on AWS
        return None, error_body(type(exc).__name__, str(exc), tb=exc.__traceback__)
    handler = getattr(module, function_name, None)
    if not callable(handler):
        return None, error_body("Runtime.HandlerNotFound",
                                f"Handler '{function_name}' missing on module '{module_name}'")
    return handler, None


class _RequestIdFilter(logging.Filter):
    request_id = ""

    def filter(self, record):
        record.aws_request_id = self.request_id
        return True


def _install_logging() -> _RequestIdFilter:
    """The AWS runtime's root handler: ``[LEVEL]\\t<UTC time>\\t<request id>\\t<message>``."""
    request_filter = _RequestIdFilter()
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s",
                                  "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(request_filter)
    logging.getLogger().addHandler(handler)
    return request_filter


def _serve(handler, header: dict, body: bytes, args, request_filter, init_ms: float) -> tuple[str, bytes]:
    """One invocation: its log lines, and what goes back to the manager."""
    try:
        event = decode_event(body)
    except ValueError as exc:  # refused before the handler runs: no START/END/REPORT, as on Lambda
        return "invalid_payload", str(exc).encode()
    request_id = header["id"]
    print(f"START RequestId: {request_id} Version: {args.version}", file=sys.stderr)
    began = time.perf_counter()
    try:
        return _run_one(handler, event, header, args, request_filter)
    finally:
        duration_ms = (time.perf_counter() - began) * 1000
        max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        init_part = f"\tInit Duration: {init_ms:.2f} ms" if header.get("init") else ""
        print(f"END RequestId: {request_id}\nREPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
              f"Billed Duration: {max(1, math.ceil(duration_ms))} ms\tMemory Size: {args.memory_mb} MB\t"
              f"Max Memory Used: {max_rss_mb} MB{init_part}", file=sys.stderr, flush=True)
        request_filter.request_id = ""


def _run_one(handler, event, header: dict, args, request_filter) -> tuple[str, bytes]:
    request_id = header["id"]
    request_filter.request_id = request_id
    context = LambdaContext(request_id, header["deadline_ms"], args.function_name, args.version,
                            str(args.memory_mb), args.region, args.log_group, args.log_stream, header.get("arn"))
    try:
        result = handler(event, context)
    except Exception as exc:
        tb = exc.__traceback__.tb_next or exc.__traceback__  # drop this frame
        error = error_body(type(exc).__name__, str(exc), request_id, tb)
        print(f"[ERROR] {error['errorType']}: {error['errorMessage']}\n{''.join(traceback.format_exception(exc))}",
              end="", file=sys.stderr)
        return "error", json.dumps(error).encode()
    try:
        return "result", json.dumps(result, cls=_Encoder).encode()
    except Exception as exc:  # TypeError, ValueError, RecursionError (nested too deep)
        error = error_body("Runtime.MarshalError", f"Unable to marshal response: {exc}", request_id)
        return "error", json.dumps(error).encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code-dir", required=True)
    parser.add_argument("--handler", default="handler.lambda_handler")
    parser.add_argument("--function-name", required=True)
    parser.add_argument("--memory-mb", type=int, default=512)
    parser.add_argument("--timeout-s", type=float, default=30)
    args = parser.parse_args(argv)
    args.version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
    args.region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    args.log_group = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME") or f"/aws/lambda/{args.function_name}"
    args.log_stream = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME") or (
        f"{datetime.now(timezone.utc):%Y/%m/%d}/[{args.version}]{uuid.uuid4().hex}")

    # Take the protocol channel, then point fds 0/1 away from it (fd 1 -> stderr, the log).
    channel_in = os.fdopen(os.dup(0), "rb")
    channel_out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull)  # noqa: SIM115
    sys.stdout = sys.stderr  # line-buffered text on the log file

    code_dir = os.path.abspath(args.code_dir)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [code_dir] + [p for p in sys.path if p and os.path.abspath(p) not in (here, code_dir)]
    os.chdir(code_dir)
    request_filter = _install_logging()

    started = time.perf_counter()
    handler, init_error = load_handler(args.handler)
    init_ms = (time.perf_counter() - started) * 1000
    if init_error is not None:
        print(f"[ERROR] {init_error['errorType']}: {init_error['errorMessage']}", file=sys.stderr)
        print(f"INIT_REPORT Init Duration: {init_ms:.2f} ms\tPhase: init\tStatus: error\t"
              f"Error Type: {init_error['errorType']}", file=sys.stderr, flush=True)
        channel_out.write(encode_frame({"type": "init_error", "init_ms": init_ms}, json.dumps(init_error).encode()))
        channel_out.flush()
        return 1
    sys.stderr.flush()
    channel_out.write(encode_frame({"type": "ready", "init_ms": init_ms}))
    channel_out.flush()

    while True:
        frame = read_frame(channel_in)
        if frame is None:  # the manager closed the channel: shut down
            return 0
        header, body = frame
        began = time.perf_counter()
        try:
            kind, answer = _serve(handler, header, body, args, request_filter, init_ms)
        except Exception as exc:  # the backstop: whatever went wrong, the environment answers and lives on
            kind, answer = "error", json.dumps(error_body(
                "Runtime.Unknown", f"the runtime failed: {type(exc).__name__}: {exc}", header.get("id"))).encode()
        duration_ms = (time.perf_counter() - began) * 1000
        channel_out.write(encode_frame({"type": kind, "ms": duration_ms}, answer))
        channel_out.flush()


if __name__ == "__main__":
    sys.exit(main())
