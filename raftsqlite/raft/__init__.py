"""Our Raft engine: a pure core (core.py), durable log (log.py), asyncio transport
(transport.py), the driver that runs the core on the event loop (driver.py), and a
deterministic simulator (sim.py). See docs/design/raft.md."""
