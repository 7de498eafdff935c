"""Azure Functions entry point (Python v2 programming model, HTTP streams extension): routes only; the
service lives in the `realtime_speech` package."""

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from realtime_speech import chat_api, http, reports

app = func.FunctionApp()


@app.route(route="speech", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def speech(req: Request) -> Response:
    return await http.speech(req)


@app.route(route="v1/chat/completions", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def chat_completions(req: Request) -> Response:
    return await chat_api.chat_completions(req)


@app.route(route="v1/models", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def models(req: Request) -> Response:
    return await chat_api.models(req)


@app.warm_up_trigger(arg_name="context")
async def warmup(context: func.warmup.WarmUpContext) -> None:
    await http.warm_up()


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: Request) -> Response:
    return await reports.health(req)


@app.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def status(req: Request) -> Response:
    return await reports.status(req)


@app.route(route="playground", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def playground(req: Request) -> Response:
    return await http.playground(req)
