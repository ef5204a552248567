"""The cloud side: ingest workers, the fleet store, downlink commands. No llama.cpp here."""
