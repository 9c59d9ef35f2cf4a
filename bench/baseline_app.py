"""The physical limit of the HTTP layer: a bare Starlette app that reads the webhook and answers
200 with the same empty TwiML, served by uvicorn exactly as `platica serve` serves Plática.

    python -m bench.baseline_app --port 9100
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'


async def webhook(request: Request) -> Response:
    await request.body()
    return Response(content=EMPTY_TWIML, media_type="text/xml")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/webhook/sms", webhook, methods=["POST"]),
        Route("/webhook/whatsapp", webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # The same uvicorn settings as `platica serve` (src/platica/cli/serve.py).
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        proxy_headers=True,
        server_header=False,
    )


if __name__ == "__main__":
    main()
