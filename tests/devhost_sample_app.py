"""A small FunctionApp for the dev host tests (tests/test_devhost.py)."""

import asyncio
import json
import logging
import os
import threading
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

# Read at import time: the dev host must load local.settings.json before it imports the app.
SETTING_AT_IMPORT = os.environ.get("SAMPLE_FROM_SETTINGS")

BINARY_BODY = bytes(range(256)) * 4


def _json(payload: object, status_code: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(payload), status_code=status_code, mimetype="application/json")


@app.route(route="hello", methods=["GET"])
def hello(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(f"{SETTING_AT_IMPORT} {os.environ.get('SAMPLE_OVERRIDDEN')}")


@app.route(route="echo/{kind}/{*rest}", methods=["POST", "PUT"], auth_level=func.AuthLevel.FUNCTION)
def echo(req: func.HttpRequest) -> func.HttpResponse:
    return _json(
        {
            "method": req.method,
            "url": req.url,
            "params": dict(req.params),
            "route_params": dict(req.route_params),
            "headers": dict(req.headers),
            "body": req.get_body().decode(),
            "on_main_thread": threading.current_thread() is threading.main_thread(),
        }
    )


@app.route(route="items/{id:int}", methods=["GET"])
def item(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"route_params": dict(req.route_params)})


@app.route(route="items/latest", methods=["GET"])
def latest_item(req: func.HttpRequest) -> str:
    return "latest"


@app.route(route="binary", methods=["GET"])
def binary(req: func.HttpRequest) -> func.HttpResponse:
    response = func.HttpResponse(
        BINARY_BODY, status_code=201, headers={"X-Sample": "one"}, mimetype="application/octet-stream"
    )
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; Path=/")
    return response


@app.route(route="fail", methods=["GET"])
def fail(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("sample failure with a secret detail")


@app.route(route="async", methods=["GET"])
async def async_hello(req: func.HttpRequest) -> func.HttpResponse:
    await asyncio.sleep(0)
    return _json({"on_main_thread": threading.current_thread() is threading.main_thread()})


@app.route(route="slow", methods=["GET"])
def slow(req: func.HttpRequest) -> func.HttpResponse:
    logging.info("slow: started")
    time.sleep(float(req.params.get("seconds", "0.5")))
    return func.HttpResponse("done")


@app.timer_trigger(schedule="0 0 * * * *", arg_name="timer", run_on_startup=False)
def hourly(timer: func.TimerRequest) -> None:
    """Not an HTTP function: listed as skipped, never served."""
