from mxw_shared.settings import CommonSettings


class ChunkerSettings(CommonSettings):
    service_name: str = "chunker"
    port: int = 8003
    # A chunk closes at the first sentence end after `target_s`, and at the latest at `max_s`
    # or `max_chars`; a trailing chunk shorter than `min_s` joins the one before it.
    target_s: float = 45.0
    max_s: float = 90.0
    min_s: float = 10.0
    max_chars: int = 1500
    keywords_per_chunk: int = 5
    keyword_language: str = "en"
