"""Router: names and aliases, least-outstanding balancing, retries with backoff, fallback, health.

Local replicas are tiny stand-ins with ``stats()`` (the router only asks them whether they are up);
remote replicas are real :class:`Upstream` objects over an ``httpx.MockTransport`` whose availability
a test switches on and off.
"""
from __future__ import annotations

import asyncio

import httpx
import pytest

from autoglm.errors import ModelNotFoundError, OverloadedError
from autoglm.gateway.facade import GatewayError
from autoglm.gateway.router import Backend, Route, Router
from autoglm.gateway.upstream import Upstream

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Stub:
    def __init__(self, name: str):
        self.model_name = name
        self.description = f"stub {name}"
        self.max_model_len = 128
        self.broken = False

    def stats(self):
        if self.broken:
            raise RuntimeError("engine loop died")
        return {}


class Switch:
    """A remote server that can be turned off: refuses connections while ``up`` is False."""

    def __init__(self):
        self.up = True
        self.calls = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"data": []})


def remote(switch: Switch, url: str = "http://r:1") -> Backend:
    client = httpx.AsyncClient(transport=httpx.MockTransport(switch.handler))
    return Backend(upstream=Upstream(url, client=client))


async def via_upstream(upstream: Upstream, route: Route):
    reply = await upstream.forward("/chat/completions", {"model": "x"})
    return ("remote", upstream.base_url, reply.status)


def test_resolve_names_aliases_and_unknown():
    a, b = Stub("a"), Stub("b")
    router = Router([Route("a", [Backend(engine=a)], aliases=["first"]), Route("b", [Backend(engine=b)])])
    assert router.resolve("first").name == "a"
    assert router.resolve(None).name == "a"
    with pytest.raises(ModelNotFoundError, match="Available models: a, b, first"):
        router.resolve("c")
    cards = {c["id"]: c for c in router.model_cards()}
    assert set(cards) == {"a", "b", "first"} and cards["first"]["root"] == "a"
    assert cards["a"]["description"] == "stub a" and cards["a"]["max_model_len"] == 128


def test_duplicate_name_is_refused():
    with pytest.raises(ValueError, match="'x' is used twice"):
        Router([Route("a", [Backend(engine=Stub("a"))], aliases=["x"]), Route("x", [Backend(engine=Stub("x"))])])


async def test_least_outstanding_balancing():
    engines = [Stub(f"r{i}") for i in range(3)]
    router = Router([Route("m", [Backend(engine=e) for e in engines])])
    gate = asyncio.Event()

    async def hold(engine, route):
        await gate.wait()
        return engine.model_name

    # Three concurrent requests land on three different replicas.
    tasks = [asyncio.create_task(router.dispatch("m", local=hold, remote=via_upstream)) for _ in range(3)]
    await asyncio.sleep(0)
    backends = router.routes[0].backends
    assert [b.outstanding for b in backends] == [1, 1, 1]
    gate.set()
    done = await asyncio.gather(*tasks)
    assert sorted(d.result for d in done) == ["r0", "r1", "r2"]
    # Replica 1 still holds a stream (not released): the next two go to 0 and 2.
    done[0].release(), done[2].release()
    busy = next(d for d in done if d.backend is backends[1])
    for d in done:
        if d is not busy:
            d.release()
    picks = []
    for _ in range(2):
        d = await router.dispatch("m", local=lambda e, r: asyncio.sleep(0, e.model_name), remote=via_upstream)
        picks.append(d.result)
    assert "r1" not in picks and sorted(picks) == ["r0", "r2"]
    busy.release()
    busy.release()  # idempotent
    assert backends[1].outstanding == 0


async def test_retries_with_backoff_then_marks_down_and_falls_back():
    down = Switch()
    down.up = False
    router = Router([
        Route("remote", [remote(down)], fallback="local"),
        Route("local", [Backend(engine=Stub("local"))]),
    ], retries=2, backoff=0.05, unhealthy_after=2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    d = await router.dispatch("remote", local=lambda e, r: asyncio.sleep(0, "fallback-answer"), remote=via_upstream)
    assert d.result == "fallback-answer" and d.route.name == "local"
    assert down.calls == 2  # two failures mark it down; the third attempt finds no healthy replica
    assert loop.time() - t0 >= 0.05  # backed off before the retry
    assert router.health()["models"]["remote"]["status"] == "down"
    assert router.health()["status"] == "degraded"
    # While down it is skipped without a connection attempt.
    await router.dispatch("remote", local=lambda e, r: asyncio.sleep(0, "again"), remote=via_upstream)
    assert down.calls == 2


async def test_no_fallback_gives_a_clean_503():
    down = Switch()
    down.up = False
    router = Router([Route("remote", [remote(down)])], retries=1, backoff=0.01)
    with pytest.raises(GatewayError) as info:
        await router.dispatch("remote", local=None, remote=via_upstream)
    assert info.value.status == 503 and info.value.code == "model_unavailable"
    assert info.value.to_dict()["error"]["message"].startswith("model 'remote' is unavailable")


async def test_retry_moves_to_another_replica():
    bad, good = Switch(), Switch()
    bad.up = False
    router = Router([Route("m", [remote(bad, "http://bad:1"), remote(good, "http://good:1")])], backoff=0.01)
    router.routes[0].backends[1].served = 5  # make the bad one the first pick
    d = await router.dispatch("m", local=None, remote=via_upstream)
    assert d.result == ("remote", "http://good:1/v1", 200)
    assert bad.calls == 1 and good.calls == 1


async def test_4xx_and_other_errors_are_not_retried():
    calls = []

    async def fail(engine, route):
        calls.append(1)
        raise ValueError("bad request")

    router = Router([Route("m", [Backend(engine=Stub("a")), Backend(engine=Stub("b"))])])
    with pytest.raises(ValueError):
        await router.dispatch("m", local=fail, remote=via_upstream)
    assert len(calls) == 1 and all(b.outstanding == 0 for b in router.routes[0].backends)


async def test_saturated_model_uses_fallback_or_reraises_429():
    async def local(engine, route):
        if engine.model_name == "busy":
            raise OverloadedError("queue full", retry_after=2)
        return (engine.model_name, route.name)

    router = Router([Route("busy", [Backend(engine=Stub("busy"))], fallback="spare"),
                     Route("spare", [Backend(engine=Stub("spare"))])])
    assert (await router.dispatch("busy", local=local, remote=via_upstream)).result == ("spare", "spare")
    alone = Router([Route("busy", [Backend(engine=Stub("busy"))])])
    with pytest.raises(OverloadedError):
        await alone.dispatch("busy", local=local, remote=via_upstream)


async def test_health_check_brings_an_upstream_back():
    sw = Switch()
    router = Router([Route("r", [remote(sw)])], health_check_interval=0.05)
    backend = router.routes[0].backends[0]
    sw.up = False
    await router.start()
    try:
        for _ in range(100):
            if not backend.healthy:
                break
            await asyncio.sleep(0.01)
        assert router.health()["status"] == "unavailable"
        sw.up = True
        for _ in range(100):
            if backend.healthy:
                break
            await asyncio.sleep(0.01)
        assert router.health()["models"]["r"]["status"] == "ok"
    finally:
        await router.close()


def test_broken_local_engine_is_reported_down():
    stub = Stub("a")
    router = Router([Route("a", [Backend(engine=stub)])])
    stub.broken = True
    assert router.health()["models"]["a"]["status"] == "down"
    assert router.pick(router.routes[0]) is None


async def test_prefix_affinity_keeps_a_conversation_on_one_replica_least_outstanding_spreads_it():
    history = "<system>" + "You answer questions about parcels. " * 20  # several prefix blocks long

    async def served_by(policy: str) -> list[str]:
        engines = [Stub("a"), Stub("b"), Stub("c")]
        router = Router([Route("m", [Backend(engine=e, label=e.model_name) for e in engines])], policy=policy)
        seen = []
        for turn in range(6):  # each turn resends the history, one request at a time

            async def local(engine, route):
                return engine.model_name

            d = await router.dispatch("m", local=local, remote=via_upstream, prefix=history + f"<user>turn {turn}")
            d.release()
            seen.append(d.result)
        return seen

    assert len(set(await served_by("prefix_affinity"))) == 1
    assert len(set(await served_by("least_outstanding"))) == 3  # ties go to the one that served least
    with pytest.raises(ValueError, match="routing policy"):
        Router([Route("m", [Backend(engine=Stub("a"))])], policy="random")


async def test_the_prompt_text_is_computed_only_for_a_route_with_several_replicas():
    asked: list[str] = []

    def text() -> str:
        asked.append("x")
        return "<user>" + "same conversation " * 20

    async def local(engine, route):
        return engine.model_name

    single = Router([Route("one", [Backend(engine=Stub("a"))])], policy="prefix_affinity")
    (await single.dispatch("one", local=local, remote=via_upstream, prefix=text)).release()
    assert asked == []  # one replica: nothing to choose, no text built
    many = Router([Route("m", [Backend(engine=Stub(n), label=n) for n in "ab"])], policy="prefix_affinity")
    firsts = []
    for _ in range(3):
        d = await many.dispatch("m", local=local, remote=via_upstream, prefix=text)
        d.release()
        firsts.append(d.result)
    assert len(asked) == 3 and len(set(firsts)) == 1  # asked each time, and the same replica kept
