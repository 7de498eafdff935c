// The openai npm package, unmodified, asking the app for spoken answers: `node chat_completions_client.mjs
// <base url> <model> <text>`. Prints one JSON line per call: what `chat.completions.create` returned
// (a WAV) and what `chat.completions.stream(...).finalChatCompletion()` assembled (raw PCM16).
import OpenAI from "openai";

const [baseURL, model, text] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", defaultHeaders: { "x-functions-key": "a-local-key" }, maxRetries: 0 });
const ask = (format) => ({
  model,
  modalities: ["text", "audio"],
  audio: { voice: "alloy", format },
  messages: [{ role: "user", content: text }],
});

const summary = (kind, completion) => {
  const [choice] = completion.choices;
  const { id, data, transcript, expires_at: expiresAt, url } = choice.message.audio;
  return { kind, completion_id: completion.id, finish_reason: choice.finish_reason, id, data, transcript, expires_at: expiresAt, url };
};

const created = await client.chat.completions.create(ask("wav"));
console.log(JSON.stringify(summary("create", created)));
const stream = client.chat.completions.stream({ ...ask("pcm16"), stream: true });
console.log(JSON.stringify(summary("stream", await stream.finalChatCompletion())));
