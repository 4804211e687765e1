"""GET /metrics: the Prometheus scrape of this process (proxy/metrics.py). Open like /status: it holds host and model
names and counts, never a URL, a key or a prompt."""

from hosts import snapshot
from proxy import metrics
from proxy.consumers import ApiConsumer


class MetricsConsumer(ApiConsumer):
    methods = ("GET", "HEAD")

    async def serve(self, body):
        await snapshot.ensure_fresh()
        headers = [(b"content-type", metrics.CONTENT_TYPE.encode())]
        await self.send_response(200, metrics.exposition(), headers=headers)
