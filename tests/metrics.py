"""A /metrics page as a test reads it: every sample by name and labels, and how one moved."""

import asyncio
from collections import Counter
from collections.abc import Sequence

import httpx
from prometheus_client.parser import text_string_to_metric_families

from devstack.processes import Process

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(url: str) -> Samples:
    """Every sample of a /metrics page, by name and labels."""
    async with httpx.AsyncClient(timeout=10.0) as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def summed(urls: Sequence[str]) -> Samples:
    """The samples of several instances added up, as Prometheus' `sum` would."""
    total: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    for samples in await asyncio.gather(*(scrape(url) for url in urls)):
        total.update(samples)
    return dict(total)


def api_metrics(api_urls: Sequence[str]) -> list[str]:
    return [f"{url}/metrics" for url in api_urls]


def responder_metrics(responders: Sequence[Process]) -> list[str]:
    """Where each responder serves its metrics (devstack gives each a METRICS_PORT)."""
    return [f"http://127.0.0.1:{process.env['METRICS_PORT']}/metrics" for process in responders]


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def grown(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much a counter rose between two scrapes."""
    return value(after, name, **labels) - value(before, name, **labels)
