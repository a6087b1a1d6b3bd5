"""The server a user would write instead of a serving stack: FastAPI around Hugging Face ``generate``.

A benchmark baseline only, never part of the product. It does what the usual first attempt does: one model in
the process, a lock so that one ``generate`` runs at a time (no batching), tokens streamed through
``TextIteratorStreamer`` from a worker thread, an OpenAI-shaped chat endpoint that speaks just enough SSE for
the benchmark client (delta content, a usage chunk, ``[DONE]``).

    python -m loadtests.naive_server --model PATH --port 8123
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel


class Message(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str = "naive"
    messages: list[Message]
    max_tokens: int = 128
    temperature: float = 0.0
    stream: bool = False


def build_app(model_path: str) -> FastAPI:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32).eval()
    lock = threading.Lock()
    app = FastAPI()

    def generate(request: ChatRequest, streamer: Any, counts: dict[str, int]) -> None:
        prompt = tokenizer.apply_chat_template(
            [m.model_dump() for m in request.messages], tokenize=False, add_generation_prompt=True
        )
        inputs = tokenizer(prompt, return_tensors="pt")
        with lock, torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=request.max_tokens,
                do_sample=request.temperature > 0,
                streamer=streamer,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        counts["prompt"] = int(inputs["input_ids"].shape[1])
        counts["completion"] = int(output.shape[1]) - counts["prompt"]

    async def events(request: ChatRequest) -> AsyncIterator[str]:
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        counts: dict[str, int] = {}
        worker = threading.Thread(target=generate, args=(request, streamer, counts), daemon=True)
        worker.start()
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        # The streamer's iterator blocks; read it in a thread so the event loop keeps serving other clients.
        iterator = iter(streamer)
        while True:
            text = await asyncio.to_thread(next, iterator, None)
            if text is None:
                break
            if text:
                chunk = {
                    "id": request_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": request.model,
                    "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
        await asyncio.to_thread(worker.join)
        usage = {
            "prompt_tokens": counts.get("prompt", 0),
            "completion_tokens": counts.get("completion", 0),
            "total_tokens": counts.get("prompt", 0) + counts.get("completion", 0),
        }
        yield f"data: {json.dumps({'id': request_id, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest) -> Any:
        if request.stream:
            return StreamingResponse(events(request), media_type="text/event-stream")
        texts = [
            json.loads(event[6:])["choices"][0]["delta"]["content"]
            async for event in events(request)
            if event.startswith("data: {") and '"delta"' in event
        ]
        return {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": "".join(texts)}}]}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args(argv)
    uvicorn.run(build_app(args.model), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
