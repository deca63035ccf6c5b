"""DETR's encoder-decoder transformer: post-norm layers, positions added to queries and keys
in every attention, decoder outputs of every layer returned for the auxiliary losses."""
import copy

import torch
from torch import nn

from zoo.layers.linear import Linear

from .attention import MultiheadAttention


def _ffn(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """src (B, S, D), pos (B, S, D), padding (B, S) -> (B, S, D)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = _ffn(dim, ffn_dim, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, src, pos, padding):
        q = k = src + pos
        src = self.norm1(src + self.drop1(self.self_attn(q, k, src, key_padding_mask=padding,
                                                         need_weights=False)[0]))
        return self.norm2(src + self.drop2(self.ffn(src)))


class DecoderLayer(nn.Module):
    """tgt (B, Q, D), memory (B, S, D), pos (B, S, D), query_pos (B, Q, D), padding (B, S),
    self_attn_mask (Q, Q) bool True where blocked (query denoising) -> (B, Q, D)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = _ffn(dim, ffn_dim, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2, self.drop3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, tgt, memory, pos, query_pos, padding, self_attn_mask=None):
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.drop1(self.self_attn(q, k, tgt, attn_mask=self_attn_mask,
                                                         need_weights=False)[0]))
        tgt = self.norm2(tgt + self.drop2(self.cross_attn(tgt + query_pos, memory + pos, memory,
                                                          key_padding_mask=padding,
                                                          need_weights=False)[0]))
        return self.norm3(tgt + self.drop3(self.ffn(tgt)))


class Transformer(nn.Module):
    """DETR transformer. forward(src (B, S, D), padding (B, S), pos (B, S, D), query_embed (Q, D),
    and in training with query denoising the extra queries' content and position (B, P, D) and
    the self-attention mask (P + Q, P + Q)) -> decoder states of every layer after the shared final
    LayerNorm: (L, B, P + Q, D), the extra queries first."""

    def __init__(self, dim: int = 256, heads: int = 8, enc_layers: int = 6, dec_layers: int = 6,
                 ffn_dim: int = 2048, dropout: float = 0.1):
        super().__init__()
        enc = EncoderLayer(dim, heads, ffn_dim, dropout)
        dec = DecoderLayer(dim, heads, ffn_dim, dropout)
        self.encoder = nn.ModuleList(copy.deepcopy(enc) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(copy.deepcopy(dec) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def encode(self, src, padding, pos):
        """-> memory (B, S, D)."""
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos, padding)
        return memory

    def forward(self, src, padding, pos, query_embed, extra_content=None, extra_pos=None,
                self_attn_mask=None):
        return self.decode(self.encode(src, padding, pos), padding, pos, query_embed, extra_content,
                           extra_pos, self_attn_mask)

    def decode(self, memory, padding, pos, query_embed, extra_content=None, extra_pos=None,
               self_attn_mask=None):
        """memory (B, S, D) -> decoder states (L, B, [P +] Q, D)."""
        src = memory
        query_pos = query_embed.unsqueeze(0).expand(src.shape[0], -1, -1)
        tgt = torch.zeros_like(query_pos)
        if extra_content is not None:  # query denoising's queries go first
            tgt = torch.cat([extra_content.to(tgt), tgt], 1)
            query_pos = torch.cat([extra_pos.to(query_pos), query_pos], 1)
        states = []
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos, query_pos, padding, self_attn_mask)
            states.append(self.decoder_norm(tgt))
        return torch.stack(states)
