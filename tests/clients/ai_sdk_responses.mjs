// The Vercel AI SDK's default OpenAI provider (`openai(...)` speaks the Responses API) against the server:
// generateText, then streamText. Run from stdin with the SDK's install as the working directory, so the
// imports resolve there. Prints one JSON line: what each call returned.
//
// generateText validates every output item's type against OpenAI's list, so its provider sends
// `X-Fusion-Items: standard` (the fusion item is left out of `output`); streamText skips event and item
// types it does not know, so the plain provider streams with the fusion item and events.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";

const baseURL = process.env.SERVER_BASE_URL;
const standard = createOpenAI({ baseURL, apiKey: "sk-unused-locally", headers: { "X-Fusion-Items": "standard" } });
const plain = createOpenAI({ baseURL, apiKey: "sk-unused-locally" });
const prompt = "Which of A and B should we choose?";

const generated = await generateText({ model: standard(process.env.SERVER_MODEL), prompt, maxRetries: 0 });
const streamed = streamText({
  model: plain(process.env.SERVER_MODEL),
  prompt,
  maxRetries: 0,
  includeRawChunks: true,
  onError: ({ error }) => { throw error; },
});
const parts = [];
const raw = [];
for await (const part of streamed.fullStream) {
  if (part.type === "raw") raw.push(part.rawValue.type);
  else parts.push(part.type);
}
console.log(JSON.stringify({
  generated: { text: generated.text, finishReason: generated.finishReason, totalTokens: generated.usage.totalTokens },
  streamed: { text: await streamed.text, finishReason: await streamed.finishReason, parts, raw },
}));
