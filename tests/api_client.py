"""Drives `zkinfer api` with the official openai client; prints one JSON summary.

Usage: python tests/api_client.py BASE_URL  (BASE_URL ends in /v1)
"""

import json
import sys

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
messages = [{"role": "user", "content": "the fox"}]
summary = {}

models = client.models.list()
model = models.data[0].id
summary["model"] = model

chat = client.chat.completions.create(model=model, messages=messages, max_tokens=8, seed=5)
again = client.chat.completions.create(model=model, messages=messages, max_tokens=8, seed=5)
verification = chat.model_extra["verification"]
summary["chat"] = {
    "content": chat.choices[0].message.content,
    "finish_reason": chat.choices[0].finish_reason,
    "completion_tokens": chat.usage.completion_tokens,
    "token_ids": verification["token_ids"],
    "nonce": verification["nonce"],
    "again_token_ids": again.model_extra["verification"]["token_ids"],
    "again_nonce": again.model_extra["verification"]["nonce"],
}

stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=8, seed=5, stream=True
)
pieces, last = [], None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    last = chunk
summary["stream"] = {
    "content": "".join(pieces),
    "completion_tokens": last.usage.completion_tokens,
    "token_ids": last.model_extra["verification"]["token_ids"],
    "finish_reason": last.choices[0].finish_reason,
}

greedy = client.chat.completions.create(
    model=model, messages=messages, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
)
summary["logprobs"] = [
    {
        "token": entry.token,
        "logprob": entry.logprob,
        "top": [[top.token, top.logprob] for top in entry.top_logprobs],
    }
    for entry in greedy.choices[0].logprobs.content
]

completion = client.completions.create(model=model, prompt="the", max_tokens=4, temperature=0)
summary["completion"] = {
    "text": completion.choices[0].text,
    "token_ids": completion.model_extra["verification"]["token_ids"],
}

try:
    client.chat.completions.create(model=model, messages=messages, temperature=-1)
    summary["bad_temperature"] = None
except openai.BadRequestError as e:
    summary["bad_temperature"] = {"status": e.status_code, "param": e.body.get("param")}

try:
    client.chat.completions.create(model="gpt-4", messages=messages)
    summary["unknown_model"] = None
except openai.NotFoundError as e:
    summary["unknown_model"] = {"status": e.status_code, "code": e.body.get("code")}

print(json.dumps(summary))
