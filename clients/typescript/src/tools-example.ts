// Calls a tool through a Switchyard router (or model server) with the
// protoc-gen-es stubs over gRPC (connect-node): counts the request's tokens,
// asks the model to call a weather tool, sends the tool's result back for the
// answer, then streams the same call and joins its pieces.
//
//   npx tsx src/tools-example.ts --target localhost:50051 --model smollm2-135m-instruct
//
// Each result is one line; texts and arguments are JSON strings. An error
// prints its gRPC status code and message to stderr and exits with status 1.
import { parseArgs } from "node:util";

import type { DescEnum } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  FinishReasonSchema,
  LLMService,
  ToolChoiceMode,
} from "./gen/switchyard/v1/llm_service_pb.js";

const { values: args } = parseArgs({
  options: {
    target: { type: "string", default: "localhost:50051" },
    model: { type: "string", default: "smollm2-135m-instruct" },
    question: { type: "string", default: "What's the weather like in Paris right now?" },
    "timeout-ms": { type: "string", default: "120000" },
  },
});

function enumName(schema: DescEnum, value: number): string {
  return schema.value[value]?.name ?? String(value);
}

// The tool's arguments, as JSON Schema text.
const weather = {
  name: "get_weather",
  description: "Current weather in a city",
  parameters: JSON.stringify({
    type: "object",
    properties: {
      city: { type: "string", enum: ["Paris", "Rome", "Oslo"] },
      unit: { type: "string", enum: ["celsius", "fahrenheit"] },
    },
    required: ["city", "unit"],
    additionalProperties: false,
  }),
};

async function main(): Promise<void> {
  const transport = createGrpcTransport({ baseUrl: `http://${args.target}` });
  const client = createClient(LLMService, transport);
  const callOptions = { timeoutMs: Number(args["timeout-ms"]) };
  const messages = [{ role: "user", content: args.question }];
  const required = { choice: { case: "mode" as const, value: ToolChoiceMode.REQUIRED } };
  const sampling = { temperature: 0, maxTokens: 120 };

  const counted = await client.countTokens(
    { model: args.model, messages, tools: [weather] },
    callOptions,
  );
  console.log(`count prompt_tokens=${counted.promptTokens} context_length=${counted.contextLength}`);

  const request = {
    model: args.model,
    messages,
    sampling,
    tools: [weather],
    toolChoice: required,
    parallelToolCalls: false,
  };
  const reply = await client.generate(request, callOptions);
  console.log(
    `finish ${enumName(FinishReasonSchema, reply.finishReason)}` +
      ` prompt_tokens=${reply.usage?.promptTokens ?? 0}`,
  );
  for (const call of reply.toolCalls) {
    console.log(`call ${call.name} ${JSON.stringify(call.arguments)}`);
  }

  // The caller runs the tool and sends its result back, answering the call by its id.
  const results = reply.toolCalls.map((call) => ({
    role: "tool",
    toolCallId: call.id,
    content: JSON.stringify({ temperature: 21, sky: "sunny" }),
  }));
  const final = await client.generate(
    {
      model: args.model,
      messages: [...messages, { role: "assistant", toolCalls: reply.toolCalls }, ...results],
      sampling,
      tools: [weather],
      toolChoice: { choice: { case: "mode", value: ToolChoiceMode.NONE } },
    },
    callOptions,
  );
  console.log(
    `answer ${JSON.stringify(final.text)} finish=${enumName(FinishReasonSchema, final.finishReason)}`,
  );

  // Streamed, a call comes in pieces: its name first, then fragments of its arguments.
  const names = new Map<number, string>();
  const argumentsOf = new Map<number, string>();
  for await (const chunk of client.streamGenerate(request, callOptions)) {
    for (const piece of chunk.toolCalls) {
      if (piece.name) names.set(piece.index, piece.name);
      argumentsOf.set(piece.index, (argumentsOf.get(piece.index) ?? "") + piece.arguments);
    }
  }
  for (const [index, name] of [...names.entries()].sort((a, b) => a[0] - b[0])) {
    console.log(`stream-call ${name} ${JSON.stringify(argumentsOf.get(index) ?? "")}`);
  }
}

main().catch((error: unknown) => {
  if (error instanceof ConnectError) {
    console.error(`error: ${Code[error.code]}: ${error.rawMessage}`);
  } else {
    console.error("error:", error);
  }
  process.exit(1);
});
