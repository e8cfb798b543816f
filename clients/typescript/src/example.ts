// Calls a Switchyard router (or model server) with the protoc-gen-es stubs over
// gRPC (connect-node's gRPC transport): lists the models, generates a
// completion, then streams the same prompt.
//
//   npx tsx src/example.ts --target localhost:50051 --model smollm2-135m-instruct --prompt "The capital of France is"
//
// Each result is one line; texts are JSON strings. An error prints its gRPC
// status code and message, and its google.rpc.ErrorInfo (reason, available
// models), to stderr and exits with status 1.
import { parseArgs } from "node:util";

import type { DescEnum } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

import {
  FinishReasonSchema,
  LLMService,
  ModelStatusSchema,
} from "./gen/switchyard/v1/llm_service_pb.js";

const { values: args } = parseArgs({
  options: {
    target: { type: "string", default: "localhost:50051" },
    model: { type: "string", default: "smollm2-135m-instruct" },
    prompt: { type: "string", default: "The capital of France is" },
    "max-tokens": { type: "string", default: "16" },
    "timeout-ms": { type: "string", default: "60000" },
  },
});

/** The enum value's name as written in the .proto (what grpcurl and Go print). */
function enumName(schema: DescEnum, value: number): string {
  return schema.value[value]?.name ?? String(value);
}

async function main(): Promise<void> {
  // Plaintext HTTP/2, as the servers listen by default; use https:// for TLS.
  const transport = createGrpcTransport({ baseUrl: `http://${args.target}` });
  const client = createClient(LLMService, transport);
  const callOptions = { timeoutMs: Number(args["timeout-ms"]) };

  const { models } = await client.listModels({}, callOptions);
  for (const model of models) {
    console.log(
      `model ${model.id} ${enumName(ModelStatusSchema, model.status)}` +
        ` backend=${model.backend} context_length=${model.contextLength}`,
    );
  }

  // Greedy decoding: the stream repeats the unary answer.
  const request = {
    model: args.model,
    prompt: args.prompt,
    sampling: { maxTokens: Number(args["max-tokens"]), temperature: 0 },
  };

  const reply = await client.generate(request, callOptions);
  console.log(
    `generate ${JSON.stringify(reply.text)} finish=${enumName(FinishReasonSchema, reply.finishReason)}` +
      ` prompt_tokens=${reply.usage?.promptTokens ?? 0}` +
      ` completion_tokens=${reply.usage?.completionTokens ?? 0}`,
  );

  let text = "";
  let messages = 0;
  let finish = 0;
  let completionTokens = 0;
  for await (const chunk of client.streamGenerate(request, callOptions)) {
    messages += 1;
    text += chunk.text;
    finish = chunk.finishReason;
    completionTokens = chunk.usage?.completionTokens ?? completionTokens;
  }
  console.log(
    `stream ${JSON.stringify(text)} messages=${messages}` +
      ` finish=${enumName(FinishReasonSchema, finish)} completion_tokens=${completionTokens}`,
  );
}

interface ErrorInfo {
  reason: string;
  metadata: Map<string, string>;
}

/**
 * The status's google.rpc.ErrorInfo detail, if it has one. The generated code
 * covers only the contract, not google.rpc, so its three fields are read off
 * the wire: reason (1), domain (2), metadata (3, a map of string entries).
 */
function errorInfo(error: ConnectError): ErrorInfo | undefined {
  for (const detail of error.details) {
    if (!("type" in detail) || detail.type !== "google.rpc.ErrorInfo") continue;
    const info: ErrorInfo = { reason: "", metadata: new Map() };
    const reader = new BinaryReader(detail.value);
    while (reader.pos < reader.len) {
      const [field, wireType] = reader.tag();
      if (field === 1 && wireType === WireType.LengthDelimited) {
        info.reason = reader.string();
      } else if (field === 3 && wireType === WireType.LengthDelimited) {
        const entry = new BinaryReader(reader.bytes());
        let key = "";
        let value = "";
        while (entry.pos < entry.len) {
          const [entryField, entryType] = entry.tag();
          if (entryField === 1) key = entry.string();
          else if (entryField === 2) value = entry.string();
          else entry.skip(entryType);
        }
        info.metadata.set(key, value);
      } else {
        reader.skip(wireType);
      }
    }
    return info;
  }
  return undefined;
}

main().catch((error: unknown) => {
  if (error instanceof ConnectError) {
    // Code[...] is the canonical name in camel case (NotFound), as Go prints it.
    console.error(`error: ${Code[error.code]}: ${error.rawMessage}`);
    const info = errorInfo(error);
    if (info !== undefined) {
      console.error(`reason: ${info.reason}`);
      const available = info.metadata.get("available");
      if (available !== undefined) console.error(`available: ${available}`);
    }
  } else {
    console.error("error:", error);
  }
  process.exit(1);
});
