"""soclab on the edge node (the lab's Raspberry Pi): instrument drivers, simulators, the publisher."""
