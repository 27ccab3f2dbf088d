"""One error shape for every 4xx the API sends, so clients parse a single thing."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """`error` is a stable machine code (switch on it), `message` is for people."""

    error: str = Field(description="stable machine-readable code, e.g. not_found, invalid_image")
    message: str = Field(description="what went wrong and how to fix it")
    details: list[dict[str, Any]] | None = Field(
        default=None, description="per-field problems, when there are several"
    )


class ApiError(Exception):
    """Raised anywhere below the routes; the app turns it into `ErrorBody` with `status`."""

    def __init__(
        self, status: int, error: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return ErrorBody(error=self.error, message=self.message, details=self.details).model_dump(
            exclude_none=True
        )


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the error codes a route can send (schemathesis checks them)."""
    text = {
        400: "Malformed request",
        401: "Missing or wrong API key",
        403: "Operation disabled by configuration",
        404: "Unknown product",
        409: "Conflict with the served state",
        413: "Upload or image too large",
        415: "Not a readable image",
        422: "Invalid parameters or body",
        503: "Not ready: the model is not loaded or the vector store is down",
    }
    return {c: {"model": ErrorBody, "description": text.get(c, "Error")} for c in codes}
