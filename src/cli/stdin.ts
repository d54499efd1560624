/** Reads all of `stream` (e.g. a job's value piped in with `-`). */
async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
  return Buffer.concat(chunks);
}

/** The value argument, or stdin when it is `-`. */
export async function valueArgument(value: string, stdin: NodeJS.ReadableStream): Promise<Buffer | string> {
  return value === '-' ? readAll(stdin) : value;
}
