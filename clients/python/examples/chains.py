"""Prompt templates and chains: two steps, the second streamed.

    python clients/python/examples/chains.py            # against `make run`

SWITCHYARD_TARGET and SWITCHYARD_MODEL pick another server or model.
"""

from __future__ import annotations

import asyncio
import os

from switchyard import (
    AsyncClient,
    ChatPromptTemplate,
    LLMChain,
    MissingVariablesError,
    PromptTemplate,
    SequentialChain,
)

TARGET = os.environ.get("SWITCHYARD_TARGET", "localhost:50051")
MODEL = os.environ.get("SWITCHYARD_MODEL", "smollm2-135m-instruct")


async def main() -> None:
    async with AsyncClient(TARGET) as client:
        # Step 1: a completion prompt; its answer is stored as "fact".
        fact = LLMChain(
            client,
            MODEL,
            PromptTemplate("The capital of {country} is"),
            output_key="fact",
            max_tokens=8,
            temperature=0,
        )
        # Step 2: a chat whose user turn uses step 1's output.
        explain = LLMChain(
            client,
            MODEL,
            ChatPromptTemplate(
                [
                    ("system", "You are a {style} tour guide."),
                    ("user", "Tell me about {country}: {fact}"),
                ]
            ),
            output_key="tour",
            max_tokens=32,
            temperature=0,
        )
        chain = SequentialChain([fact, explain])
        print("needs:", ", ".join(chain.input_variables))

        values = await chain.ainvoke(country="France", style="cheerful")
        print("fact:", values["fact"])
        print("tour:", values["tour"])

        # Streaming: step 1 runs whole, step 2's tokens arrive as they are made.
        print("streamed:", end=" ")
        async for chunk in chain.astream(country="Italy", style="calm"):
            print(chunk.text, end="", flush=True)
        print()

        try:
            await chain.ainvoke(country="Spain")  # no "style": fails before any call
        except MissingVariablesError as error:
            print("error:", error)


if __name__ == "__main__":
    asyncio.run(main())
