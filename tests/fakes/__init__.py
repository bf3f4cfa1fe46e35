"""Local stand-ins for services outside this machine, speaking their documented protocols."""
