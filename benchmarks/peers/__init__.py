"""Other people's code run beside this project's, measured side by side: ``official_reptile`` (openai/supervised-reptile)."""
