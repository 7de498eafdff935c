"""Azure Functions entry point (Python v2 programming model): routes only; the service lives in
the `realtime_speech` package."""

import azure.functions as func

from realtime_speech import http

app = func.FunctionApp()


@app.route(route="speech", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def speech(req: func.HttpRequest) -> func.HttpResponse:
    return await http.speech(req)


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    return await http.health(req)
