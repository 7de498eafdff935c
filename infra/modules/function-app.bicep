// The function app on a Flex Consumption (FC1) plan, Linux, Python. It runs as the user-assigned
// identity for everything: host storage (AzureWebJobsStorage__*), the deployment package, Application
// Insights, and (through AZURE_CLIENT_ID, read by azure-identity) the audio storage and Azure OpenAI.

@description('Name of the function app.')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Azure region.')
param location string

@description('Tags for the resources; the app also gets `azd-service-name`.')
param tags object = {}

@description('Service name in azure.yaml; azd finds the app by this tag.')
param serviceName string = 'api'

@description('Resource id of the user-assigned managed identity.')
param identityId string

@description('Client id of the user-assigned managed identity.')
param identityClientId string

@description('Name of the storage account for the Functions host and the deployment package.')
param hostStorageAccountName string

@description('Blob container in the host account that receives the deployment package.')
param deploymentContainerName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Python version of the Functions runtime.')
@allowed([
  '3.13'
])
param pythonVersion string = '3.13'

@description('Memory of each instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Upper bound on the number of instances the app scales out to (Flex Consumption allows 40 to 1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Concurrent HTTP requests one instance takes before the platform adds instances.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 16

@description('The settings the app code reads (names as in realtime_speech/settings.py), all strings.')
param appSettings object

resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: hostStorageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy on Flex Consumption exists only in some regions; not needed here, as a caller can retry a failed request
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: a public HTTP API; each call needs a function key (auth level FUNCTION)
  // checkov:skip=CKV_AZURE_17: callers authenticate with function keys; client certificates are not part of the API
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero across instances on its own; always-ready instances would bill around the clock
  // checkov:skip=CKV_AZURE_213: no App Service health-check path: the platform manages Flex instances, and GET /api/status serves operators
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostStorage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

// Settings of the Functions host and the platform. Flex Consumption takes the runtime from
// functionAppConfig: FUNCTIONS_WORKER_RUNTIME, FUNCTIONS_EXTENSION_VERSION and similar are rejected.
// PYTHON_ENABLE_INIT_INDEXING=1: the HTTP streams extension (FastAPI request and response types) needs it
// on Python 3.11 and 3.12; 3.13 does without it, and it is kept so that a move between them changes
// pythonVersion alone. PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true: the Python worker exports the
// app's OpenTelemetry data to Application Insights itself (it configures the azure-monitor-opentelemetry
// distro, with Entra auth from APPLICATIONINSIGHTS_AUTHENTICATION_STRING), so that, with host.json's
// "telemetryMode": "OpenTelemetry", the host does not send the worker's logs a second time. The distro
// reads the rest (docs/observability.md): PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME, the one logger it
// collects (the app's; the default, the root logger, would also collect the SDKs' and the exporter's own
// records); OTEL_TRACES_SAMPLER/_ARG, whole traces, all of them (the default samples spans, not traces);
// OTEL_PYTHON_DISABLED_INSTRUMENTATIONS, every instrumentation but the Azure SDK's, as the app's spans
// already describe its requests and HTTP clients would add spans twice.
var hostSettings = {
  PYTHON_ENABLE_INIT_INDEXING: '1'
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
  PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME: 'realtime_speech'
  OTEL_TRACES_SAMPLER: 'microsoft.fixed_percentage'
  OTEL_TRACES_SAMPLER_ARG: '1.0'
  OTEL_PYTHON_DISABLED_INSTRUMENTATIONS: 'django,fastapi,flask,httpx,httpx2,psycopg2,requests,urllib,urllib3'
  AzureWebJobsStorage__blobServiceUri: hostStorage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: hostStorage.properties.primaryEndpoints.queue
  AzureWebJobsStorage__tableServiceUri: hostStorage.properties.primaryEndpoints.table
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  AZURE_CLIENT_ID: identityClientId
}

resource settings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov:skip=CKV_AZURE_13: false positive: this is the 'appsettings' config, not 'web'/'authsettings'; callers authenticate with function keys
  // checkov:skip=CKV_AZURE_63: false positive ('appsettings', not 'web' or 'logs'); logs go to Application Insights
  // checkov:skip=CKV_AZURE_65: false positive ('appsettings', not 'web' or 'logs'); errors go to Application Insights
  // checkov:skip=CKV_AZURE_66: false positive ('appsettings', not 'web' or 'logs'); requests are traced in Application Insights
  // checkov:skip=CKV_AZURE_80: false positive ('appsettings', not 'web'); a Python app, no .NET Framework
  // checkov:skip=CKV_AZURE_88: false positive ('appsettings', not 'azurestorageaccounts'); the app mounts no file share
  // checkov:skip=CKV_AZURE_222: false positive ('appsettings', not 'web'); see the skip on the site
  parent: site
  name: 'appsettings'
  properties: union(appSettings, hostSettings)
}

// Basic-auth publishing (FTP, SCM) is off: deployments authenticate with Entra ID.
resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output id string = site.id
output name string = site.name
output defaultHostName string = site.properties.defaultHostName
