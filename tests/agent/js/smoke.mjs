// Streams one run through the official JS SDK and prints what it saw as one JSON line.
import { Client } from "@langchain/langgraph-sdk";

const client = new Client({ apiUrl: process.env.GRAPHGATE_URL, apiKey: process.env.GRAPHGATE_KEY });
const thread = await client.threads.create({ metadata: { from: "js" } });
const events = [];
let text = "";
let lastValues = null;
for await (const chunk of client.runs.stream(thread.thread_id, "demo", {
  input: { messages: [{ role: "user", content: "hello from js" }] },
  streamMode: ["messages-tuple", "values"],
})) {
  events.push(chunk.event);
  if (chunk.event === "messages") text += chunk.data[0].content;
  if (chunk.event === "values") lastValues = chunk.data;
}
const state = await client.threads.getState(thread.thread_id);
const found = await client.threads.search({ metadata: { from: "js" } });
console.log(JSON.stringify({
  threadId: thread.thread_id, events, text,
  lastMessages: lastValues.messages.length,
  stateMessages: state.values.messages.length,
  searched: found.map((t) => t.thread_id),
}));
