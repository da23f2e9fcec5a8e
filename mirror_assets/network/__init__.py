"""How the mirror talks to the network: Jetstream, PLC and did:web, PDSes, relays, DNS, all
through one guard against private addresses and one polite HTTP client.
"""
