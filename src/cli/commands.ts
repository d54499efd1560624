import type { Command } from './command.js';
import { dashboardCommand } from './commands/dashboard.js';
import { electCommand } from './commands/elect.js';
import { lockCommand } from './commands/lock.js';
import { observeCommand } from './commands/observe.js';
import { queueCommand } from './commands/queue.js';
import { registerCommand } from './commands/register.js';
import { semaphoreCommand } from './commands/semaphore.js';
import { servicesCommand } from './commands/services.js';
import { statusCommand } from './commands/status.js';
import { workCommand } from './commands/work.js';

/** Every command of the tool, in the order `--help` lists them. Add a command: one module, one line here. */
export const COMMANDS: readonly Command[] = [
  lockCommand,
  semaphoreCommand,
  electCommand,
  observeCommand,
  queueCommand,
  workCommand,
  registerCommand,
  servicesCommand,
  statusCommand,
  dashboardCommand,
];
