"""Load and speed: Decide requests drawn from a simulated world, the Locust user, `rta bench`."""
