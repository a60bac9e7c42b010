"""soclab on the edge node (the lab's Raspberry Pi): instrument drivers, the publisher, the spool."""
