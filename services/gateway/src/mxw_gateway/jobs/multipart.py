"""Streaming multipart/form-data: the body is parsed as it arrives, so an upload of any size
goes to disk in small pieces and is never held in memory whole."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from mxw_shared.problems import Problem
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

T = TypeVar("T")


@dataclass(frozen=True)
class PartStart:
    name: str
    filename: str | None
    content_type: str | None


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary of a Content-Type header, or a 415/422 problem."""
    if not content_type:
        raise Problem(415, "Unsupported media type", "send the upload as multipart/form-data")
    media, params = parse_options_header(content_type)
    if media != b"multipart/form-data":
        raise Problem(415, "Unsupported media type", "send the upload as multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise Problem(422, "Invalid request", "multipart/form-data without a boundary")
    return boundary


@dataclass
class _Collector:
    """Turns python-multipart's callbacks into a queue of events."""

    events: deque[Event] = field(default_factory=deque)
    headers: dict[str, str] = field(default_factory=dict)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)

    def on_part_begin(self) -> None:
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        name = self.header_field.decode("latin-1").strip().lower()
        # latin-1 keeps every byte: browsers send UTF-8 filenames raw in the header, and the
        # option parser below re-encodes as latin-1, so the filename's bytes survive intact
        # and are decoded as UTF-8 once, in on_headers_finished.
        self.headers[name] = self.header_value.decode("latin-1").strip()
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        disposition = self.headers.get("content-disposition")
        if disposition is None:
            raise Problem(422, "Invalid request", "multipart part without Content-Disposition")
        kind, params = parse_options_header(disposition)
        if kind != b"form-data" or b"name" not in params:
            raise Problem(422, "Invalid request", "multipart part is not a named form field")
        raw_filename = params.get(b"filename")
        self.events.append(
            PartStart(
                name=params[b"name"].decode("utf-8", errors="replace"),
                filename=raw_filename.decode("utf-8", errors="replace")
                if raw_filename is not None
                else None,
                content_type=self.headers.get("content-type"),
            )
        )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self.events.append(PartData(bytes(data[start:end])))

    def on_part_end(self) -> None:
        self.events.append(PartEnd())


async def multipart_events(boundary: bytes, body: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    """Events of a multipart body in order, produced while the body streams in."""
    collector = _Collector()
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": collector.on_part_begin,
            "on_header_field": collector.on_header_field,
            "on_header_value": collector.on_header_value,
            "on_header_end": collector.on_header_end,
            "on_headers_finished": collector.on_headers_finished,
            "on_part_data": collector.on_part_data,
            "on_part_end": collector.on_part_end,
        },
    )
    try:
        async for chunk in body:
            if chunk:
                parser.write(chunk)
            while collector.events:
                yield collector.events.popleft()
        parser.finalize()
    except MultipartParseError as exc:
        raise Problem(422, "Invalid request", f"malformed multipart body: {exc}") from exc
    while collector.events:
        yield collector.events.popleft()


@dataclass(frozen=True)
class Refusal:
    """Why the reader refuses a form, in the jobs API's words; each API answers it in its own
    error shape (`refuse`)."""

    reason: Literal[
        "truncated",
        "malformed",
        "second_file",
        "unknown_field",
        "too_many_fields",
        "field_too_large",
        "field_twice",
        "too_many_values",
    ]
    message: str
    field: str | None = None


def form_problem(refusal: Refusal) -> Problem:
    """The jobs API's answer to a refused form."""
    if refusal.reason == "field_too_large":
        return Problem(413, "Form field too large", refusal.message)
    return Problem(422, "Invalid request", refusal.message)


@dataclass
class Form(Generic[T]):
    fields: dict[str, str]
    repeated: list[str]  # the values of the repeatable fields, in order
    file: T | None
    filename: str | None  # the client's name of the file


async def read_form(
    events: AsyncIterator[Event],
    *,
    file_field: str,
    store_file: Callable[[AsyncIterator[bytes]], Awaitable[T]],
    max_field_bytes: int,
    max_fields: int = 32,
    known_fields: frozenset[str] | None = None,
    repeatable: frozenset[str] = frozenset(),
    max_repeated: int = 0,
    refuse: Callable[[Refusal], Problem] = form_problem,
) -> Form[T]:
    """Read every part: small text fields into memory, the one file part through `store_file`
    (which consumes its bytes as they arrive). A field named in `known_fields` (None: any
    name) is given once, or up to `max_repeated` times in all when it is `repeatable`."""
    form: Form[T] = Form(fields={}, repeated=[], file=None, filename=None)
    iterator = events.__aiter__()

    async def part_bytes() -> AsyncIterator[bytes]:
        async for event in iterator:
            if isinstance(event, PartData):
                yield event.data
            elif isinstance(event, PartEnd):
                return
            else:
                raise refuse(Refusal("malformed", "malformed multipart body"))
        raise refuse(Refusal("truncated", "multipart body ended inside a part"))

    async for event in iterator:
        if not isinstance(event, PartStart):
            continue
        name = event.name
        if name == file_field:
            if form.file is not None:
                raise refuse(Refusal("second_file", f"more than one {name!r} part", name))
            form.filename = event.filename
            form.file = await store_file(part_bytes())
            continue
        if known_fields is not None and name not in known_fields | repeatable:
            raise refuse(Refusal("unknown_field", f"unrecognized request argument: {name}", name))
        if len(form.fields) >= max_fields:
            raise refuse(Refusal("too_many_fields", "too many form fields"))
        value = bytearray()
        async for data in part_bytes():
            value += data
            if len(value) > max_field_bytes:
                raise refuse(Refusal("field_too_large", f"field {name!r} is too large", name))
        text = value.decode("utf-8", errors="replace")
        if name in repeatable:
            if len(form.repeated) >= max_repeated:
                raise refuse(Refusal("too_many_values", f"too many values of {name!r}", name))
            form.repeated.append(text)
        elif name in form.fields:
            raise refuse(Refusal("field_twice", f"form field {name!r} given twice", name))
        else:
            form.fields[name] = text
    return form
