// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title DevPriceOracle
/// @notice The devnet's price oracle, named by the AssetDAO's `priceOracle()`: the owner sets each asset's
///         price, and `getAssetPrice` answers it normalised to 18 decimals (the price of one whole token in
///         the oracle's unit, e.g. 61,000e18 for WBTC at 61,000), as production's oracle does. An asset
///         without a price answers 0. Not for production use.
/// @dev `setReverting(true)` makes every `getAssetPrice` revert `PriceUnavailable()`, so the tests can show
///      the service's fallback to token units on a real chain.
contract DevPriceOracle {
    address public immutable owner;
    /// @notice While true, `getAssetPrice` reverts (a broken or paused oracle).
    bool public reverting;

    mapping(address asset => uint256 price18) private _prices;

    event PriceSet(address indexed asset, uint256 price18);
    event RevertingSet(bool reverting);

    error NotAuthorized();
    error ZeroAddress();
    error PriceUnavailable();

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotAuthorized();
        _;
    }

    constructor() {
        owner = msg.sender;
    }

    /// @notice Set `asset`'s price: one whole token is worth `price18` / 1e18 in the oracle's unit. Owner only.
    function setPrice(address asset, uint256 price18) external onlyOwner {
        if (asset == address(0)) revert ZeroAddress();
        _prices[asset] = price18;
        emit PriceSet(asset, price18);
    }

    /// @notice Make `getAssetPrice` revert (true) or answer again (false). Owner only.
    function setReverting(bool reverting_) external onlyOwner {
        reverting = reverting_;
        emit RevertingSet(reverting_);
    }

    /// @notice The price of one whole `asset` token, normalised to 18 decimals; 0 when none is set.
    function getAssetPrice(address asset) external view returns (uint256) {
        if (reverting) revert PriceUnavailable();
        return _prices[asset];
    }
}
