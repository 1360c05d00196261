"""The guest side of VMBus in Python: a client that drives a real partition through guest
memory, the hypercall page and the SynIC pages, for tests, fuzzing and as a reference."""
