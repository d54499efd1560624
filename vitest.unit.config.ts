import { defineConfig } from 'vitest/config';

/** `npm run test:unit`: the pure core (key encoding, errors, retry, signals, argument checks); no etcd needed. */
export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts'],
    reporters: ['default'],
  },
});
