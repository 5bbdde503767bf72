"""The integration layer as chapter 7 builds it: adapters (the model types), the model config, memory estimates, the
manager and the coordinator, plus tiny offline models for tests."""
