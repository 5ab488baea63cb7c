"""Command-line tools: deft-ctl, deft-trafficgen, the demo."""
