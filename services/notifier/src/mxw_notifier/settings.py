from mxw_shared.settings import CommonSettings


class NotifierSettings(CommonSettings):
    service_name: str = "notifier"
    port: int = 8001
    # Status events buffered per WebSocket; a client that falls this far behind is dropped
    # so it cannot hold back the fan-out to everyone else.
    connection_queue_size: int = 256
    # WebSocket protocol pings keep idle connections open through proxies and detect dead
    # peers; a peer that does not answer within the timeout is disconnected.
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    max_connections_per_user: int = 20
    # How long the handler waits for a stuck client to take its close frame.
    close_timeout_s: float = 5.0
