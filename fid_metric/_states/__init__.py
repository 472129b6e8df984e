"""_states"""
