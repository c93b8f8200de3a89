"""The CRM simulator as an in-process httpx transport: the connector's real HTTP code runs
against it with no socket, and faults become the exceptions httpx would raise."""

from __future__ import annotations

import json

import httpx

from wacrm.sandbox.crm import CrmSimulator


class SimulatorTransport(httpx.BaseTransport):
    def __init__(self, simulator: CrmSimulator) -> None:
        self.simulator = simulator

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raw = request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return httpx.Response(400, json={"status": "error", "message": "Invalid JSON"})
        answer = self.simulator.handle(request.method, request.url.path, body)
        if answer.fault == "timeout":
            raise httpx.ReadTimeout("simulated timeout", request=request)
        if answer.fault == "reset":
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body", request=request
            )
        return httpx.Response(answer.status, headers=answer.headers, json=answer.body)
