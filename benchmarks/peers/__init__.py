"""Other people's code run beside this project's, measured side by side: ``official_reptile`` (openai/supervised-reptile,
timed) and ``official_reptile_accuracy`` (the same code trained and scored at a suite's budget)."""
