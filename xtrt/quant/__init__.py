"""xtrt.quant"""
