// Streams a run with the official `openai` npm SDK against a Threadlog server and prints a JSON
// summary on stdout. Usage: BASE_URL=http://127.0.0.1:8000/v1 [API_KEY=k] [MODEL=fake-model] node stream_run.mjs
//
// The prompt uses the fake upstream's directives: the first turn calls get_weather, the
// second (after the tool output) answers "Tool results: <output>".
import OpenAI from "openai";

const baseURL = process.env.BASE_URL;
if (!baseURL) {
  console.error("BASE_URL is required (e.g. http://127.0.0.1:8000/v1)");
  process.exit(2);
}
const client = new OpenAI({ baseURL, apiKey: process.env.API_KEY || "unused", maxRetries: 0, timeout: 30_000 });
const model = process.env.MODEL || "fake-model";
const prompt = process.env.PROMPT || 'call: get_weather {"city": "Paris"}';

const summary = {
  sdk_version: OpenAI.VERSION ?? null,
  events: [], // every `event` type, in order
  text_deltas: [],
  tool_calls_created: [],
  tool_call_deltas: 0,
  tool_call_arguments: "",
  run_steps_done: [],
  tool_outputs: [],
  statuses: [],
  final_text: "",
};

function observe(stream) {
  stream
    .on("event", (event) => {
      summary.events.push(event.event);
      if (event.event.startsWith("thread.run.") && !event.event.startsWith("thread.run.step.")) {
        summary.statuses.push(event.data.status);
      }
    })
    .on("textDelta", (delta) => summary.text_deltas.push(delta.value ?? ""))
    .on("toolCallCreated", (call) => summary.tool_calls_created.push({ id: call.id, type: call.type, name: call.function?.name }))
    .on("toolCallDelta", (delta) => {
      summary.tool_call_deltas += 1;
      summary.tool_call_arguments += delta.function?.arguments ?? "";
    })
    .on("runStepDone", (step) => summary.run_steps_done.push({ id: step.id, type: step.type, status: step.status }));
  return stream;
}

const assistant = await client.beta.assistants.create({
  model,
  name: "node-sdk-test",
  instructions: "Use get_weather for weather questions.",
  tools: [
    {
      type: "function",
      function: {
        name: "get_weather",
        description: "Weather for a city",
        parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
      },
    },
  ],
});
const thread = await client.beta.threads.create({ messages: [{ role: "user", content: prompt }] });

let stream = observe(client.beta.threads.runs.stream(thread.id, { assistant_id: assistant.id }));
let run = await stream.finalRun();
let rounds = 0;
while (run.status === "requires_action" && rounds < 5) {
  rounds += 1;
  const outputs = run.required_action.submit_tool_outputs.tool_calls.map((call) => {
    const args = JSON.parse(call.function.arguments || "{}");
    return { tool_call_id: call.id, output: `Sunny, 21C in ${args.city ?? "?"}` };
  });
  summary.tool_outputs.push(...outputs.map((o) => o.output));
  stream = observe(
    client.beta.threads.runs.submitToolOutputsStream(run.id, { thread_id: thread.id, tool_outputs: outputs }),
  );
  run = await stream.finalRun();
}

const messages = await client.beta.threads.messages.list(thread.id, { order: "asc" });
const last = messages.data.filter((m) => m.role === "assistant").at(-1);
summary.final_text = (last?.content ?? [])
  .filter((part) => part.type === "text")
  .map((part) => part.text.value)
  .join("");
summary.streamed_text = summary.text_deltas.join("");
summary.run = { id: run.id, status: run.status, usage: run.usage };
summary.thread_id = thread.id;
summary.assistant_id = assistant.id;
process.stdout.write(JSON.stringify(summary) + "\n");
