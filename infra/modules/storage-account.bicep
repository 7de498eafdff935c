// A hardened StorageV2 account: Entra ID only (no shared keys, so no account-key SAS either), no
// anonymous blob access, HTTPS with TLS 1.2 or newer. Used for both the host account and the audio
// account. An optional lifecycle rule deletes block blobs under given prefixes after N days.

@description('Storage account name: 3-24 lowercase letters and digits, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags for the resources.')
param tags object = {}

@description('Replication of the account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param skuName string = 'Standard_LRS'

@description('Blob containers to create (private).')
param containers array = []

@description('Delete block blobs under `deletePrefixes` this many days after they were last written; 0 keeps them.')
@minValue(0)
param deleteAfterDays int = 0

@description('Blob name prefixes, starting with the container name (e.g. "audio/"), that the lifecycle rule applies to.')
param deletePrefixes array = []

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: public endpoint by design: the Flex app has no VNet here, and callers fetch audio by SAS URL from anywhere; every request still needs Entra ID or a user-delegation SAS
  // checkov:skip=CKV_AZURE_59: as CKV_AZURE_35; anonymous access is off (allowBlobPublicAccess: false) and shared keys are refused
  // checkov:skip=CKV_AZURE_206: LRS by default for short-lived audio and host state; the `skuName` parameter selects ZRS or geo-replication
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    // Only user-delegation SAS can exist (shared keys are off); the policy logs any SAS asking for more than 7 days.
    sasPolicy: {
      sasExpirationPeriod: '7.00:00:00'
      expirationAction: 'Log'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource blobContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for container in containers: {
    parent: blobService
    name: container
    properties: {
      publicAccess: 'None'
    }
  }
]

resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = if (deleteAfterDays > 0) {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'delete-after-retention'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: deletePrefixes
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: deleteAfterDays
                }
              }
            }
          }
        }
      ]
    }
  }
}

output id string = storage.id
output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
