"""A small FunctionApp for the dev host tests (tests/test_devhost.py), in the HTTP streams model.

The streaming routes keep their state in this process: `stream/{id}` sends a first event, then waits
until `release/{id}` is called; `outcome/{id}` tells how that stream's generator ended (`completed`,
`cancelled` or `closed`), waiting for it a little when it is still running.
"""

import asyncio
import logging
import os
import threading
from collections import defaultdict
from collections.abc import AsyncIterator

import azure.functions as func
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response, StreamingResponse

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

# Read at import time: the dev host must load local.settings.json before it imports the app.
SETTING_AT_IMPORT = os.environ.get("SAMPLE_FROM_SETTINGS")

BINARY_BODY = bytes(range(256)) * 4
FIRST_EVENT = b"event: first\ndata: 1\n\n"
LAST_EVENT = b"event: last\ndata: 2\n\n"
OUTCOME_WAIT_SECONDS = 30.0  # a safety net: /api/outcome answers as soon as the stream has ended

_releases: dict[str, asyncio.Event] = {}
_outcomes: dict[str, str] = {}
_ended: dict[str, asyncio.Event] = {}
# Set once a stream's first event has been taken by the server and it waits for its release (in process).
first_event_sent: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@app.route(route="hello", methods=["GET"])
async def hello(req: Request) -> Response:
    return Response(f"{SETTING_AT_IMPORT} {os.environ.get('SAMPLE_OVERRIDDEN')}", media_type="text/plain")


@app.route(route="echo/{kind}/{*rest}", methods=["POST", "PUT"], auth_level=func.AuthLevel.FUNCTION)
async def echo(req: Request) -> JSONResponse:
    return JSONResponse(
        {
            "method": req.method,
            "url": str(req.url),
            "params": dict(req.query_params),
            "route_params": dict(req.path_params),
            "headers": dict(req.headers),
            "body": (await req.body()).decode(),
        }
    )


@app.route(route="speech", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def speech(req: Request) -> JSONResponse:
    """Stands in for the real function in the driver tests: the JSON body and one header, echoed."""
    return JSONResponse({"received": await req.json(), "key": req.headers.get("idempotency-key")}, 202)


@app.route(route="items/{id:int}", methods=["GET"])
async def item(req: Request) -> JSONResponse:
    return JSONResponse({"route_params": dict(req.path_params)})


@app.route(route="items/latest", methods=["GET"])
async def latest_item(req: Request) -> dict[str, str]:
    return {"item": "latest"}  # not a Response: FastAPI encodes it, as in the worker


@app.route(route="binary", methods=["GET"])
async def binary(req: Request) -> Response:
    response = Response(
        BINARY_BODY, status_code=201, headers={"X-Sample": "one"}, media_type="application/octet-stream"
    )
    response.headers.append("Set-Cookie", "a=1; Path=/")
    response.headers.append("Set-Cookie", "b=2; Path=/")
    return response


@app.route(route="fail", methods=["GET"])
async def fail(req: Request) -> Response:
    raise RuntimeError("sample failure with a secret detail")


@app.route(route="sync", methods=["GET"])
def sync_hello(req: Request) -> JSONResponse:
    return JSONResponse({"on_main_thread": _on_main_thread()})


@app.route(route="async", methods=["GET"])
async def async_hello(req: Request) -> JSONResponse:
    await asyncio.sleep(0)
    return JSONResponse({"on_main_thread": _on_main_thread()})


@app.route(route="slow", methods=["GET"])
async def slow(req: Request) -> Response:
    logging.info("slow: started")
    await asyncio.sleep(float(req.query_params.get("seconds", "0.5")))
    return Response("done", media_type="text/plain")


@app.route(route="stream/{id}", methods=["GET"])
async def stream(req: Request) -> StreamingResponse:
    stream_id = req.path_params["id"]
    _releases[stream_id] = asyncio.Event()
    _ended[stream_id] = asyncio.Event()
    return StreamingResponse(_events(stream_id), media_type="text/event-stream")


async def _events(stream_id: str) -> AsyncIterator[bytes]:
    outcome = "completed"
    try:
        yield FIRST_EVENT
        first_event_sent[stream_id].set()
        await _releases[stream_id].wait()
        yield LAST_EVENT
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    except GeneratorExit:
        outcome = "closed"
        raise
    finally:
        _outcomes[stream_id] = outcome
        _ended[stream_id].set()


@app.route(route="release/{id}", methods=["POST"])
async def release(req: Request) -> Response:
    _releases[req.path_params["id"]].set()
    return Response(status_code=204)


@app.route(route="outcome/{id}", methods=["GET"])
async def outcome(req: Request) -> JSONResponse:
    stream_id = req.path_params["id"]
    try:
        await asyncio.wait_for(_ended[stream_id].wait(), OUTCOME_WAIT_SECONDS)
    except TimeoutError:
        return JSONResponse({"outcome": "running"})
    return JSONResponse({"outcome": _outcomes[stream_id]})


@app.timer_trigger(schedule="0 0 * * * *", arg_name="timer", run_on_startup=False)
def hourly(timer: func.TimerRequest) -> None:
    """Not an HTTP function: listed as skipped, never served."""
