"""The small core every component may import: errors, settings, logging, retry, signals.

It imports none of the components."""
