"""The example shop's scripts: the demo and a fake payment gateway."""
