"""npuc.quant: integer arithmetic, observers and weight formats."""
