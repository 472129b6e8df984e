"""_functional"""
