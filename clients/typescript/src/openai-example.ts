// The official `openai` npm package against the router's HTTP front: lists the
// models, asks once, then streams the same question with usage.
//
//   npx tsx src/openai-example.ts --base-url http://localhost:8080/v1 [--model M]
//
// Prints one line per step (`model <id>`, `chat <json text> finish=… tokens=…`,
// `stream <json text> chunks=… finish=… tokens=…`); an API error goes to stderr
// as `error: <status> <type>: <message>` and exits 1.
import OpenAI from "openai";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    "base-url": { type: "string", default: "http://localhost:8080/v1" },
    model: { type: "string", default: "smollm2-135m-instruct" },
    prompt: { type: "string", default: "Which city is the capital of France?" },
    "max-tokens": { type: "string", default: "16" },
  },
});

const client = new OpenAI({
  baseURL: values["base-url"],
  apiKey: process.env.SWITCHYARD_API_KEY ?? "unused",
  maxRetries: 0,
});
const model = values.model as string;
const maxTokens = Number(values["max-tokens"]);
const messages: OpenAI.ChatCompletionMessageParam[] = [
  { role: "user", content: values.prompt as string },
];

async function main(): Promise<void> {
  for await (const listed of client.models.list()) {
    console.log(`model ${listed.id}`);
  }
  const answer = await client.chat.completions.create({
    model,
    messages,
    max_tokens: maxTokens,
    temperature: 0,
  });
  const choice = answer.choices[0];
  console.log(
    `chat ${JSON.stringify(choice.message.content)} finish=${choice.finish_reason} ` +
      `tokens=${answer.usage?.completion_tokens}`,
  );
  const stream = await client.chat.completions.create({
    model,
    messages,
    max_tokens: maxTokens,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let chunks = 0;
  let finish: string | null = null;
  let tokens: number | undefined;
  for await (const chunk of stream) {
    chunks += 1;
    if (chunk.choices.length > 0) {
      text += chunk.choices[0].delta.content ?? "";
      finish = chunk.choices[0].finish_reason ?? finish;
    }
    if (chunk.usage) {
      tokens = chunk.usage.completion_tokens;
    }
  }
  console.log(`stream ${JSON.stringify(text)} chunks=${chunks} finish=${finish} tokens=${tokens}`);
}

main().catch((error: unknown) => {
  if (error instanceof OpenAI.APIError) {
    const type = (error.error as { type?: string } | undefined)?.type;
    console.error(`error: ${error.status} ${type}: ${error.message}`);
  } else {
    console.error(`error: ${String(error)}`);
  }
  process.exit(1);
});
