// Chat through Stockyard with the official `openai` npm package.
//
// The only change from talking to OpenAI directly is `baseURL`. Run Stockyard
// (`cargo run --release`), then:
//
//   cd examples/node && npm install && node chat.mjs
//
// Environment (all optional):
//   OPENAI_BASE_URL   Stockyard's address (default http://localhost:4200/v1)
//   OPENAI_API_KEY    one of Stockyard's `api_keys` if you set any; otherwise any string
//   STOCKYARD_MODEL   the model or alias to ask for (default gpt-4o-mini)
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.OPENAI_BASE_URL || "http://localhost:4200/v1",
  apiKey: process.env.OPENAI_API_KEY || "stockyard",
});
const model = process.env.STOCKYARD_MODEL || "gpt-4o-mini";
const messages = [{ role: "user", content: "Say hello in five words." }];

// 1. A plain request. `.withResponse()` is only here to show Stockyard's headers; a normal
//    `await client.chat.completions.create(...)` works exactly the same.
const { data: completion, response } = await client.chat.completions
  .create({ model, messages, max_tokens: 32 })
  .withResponse();
console.log("answer:", completion.choices[0].message.content);
console.log(
  `  provider: ${response.headers.get("x-stockyard-provider")}` +
    `  model: ${response.headers.get("x-stockyard-model")}` +
    `  failover: ${response.headers.get("x-stockyard-failover")}` +
    `  trace: ${response.headers.get("x-stockyard-trace-id")}`,
);

// 2. Streaming: chunks arrive as the provider produces them. If the first provider fails before
//    its first token, Stockyard moves to the next one and the stream still looks like one answer.
const stream = await client.chat.completions.create({ model, messages, max_tokens: 32, stream: true });
process.stdout.write("streamed: ");
let finish = null;
for await (const chunk of stream) {
  const choice = chunk.choices[0];
  if (!choice) continue;
  if (choice.delta?.content) process.stdout.write(choice.delta.content);
  if (choice.finish_reason) finish = choice.finish_reason;
}
process.stdout.write("\n");
console.log("  finish_reason:", finish);
